"""Downloading the weights on request (deadiff_core.download) against a stand-in of the hub's file API
on 127.0.0.1, reached the way a user reaches a mirror: HF_ENDPOINT. huggingface_hub itself is real."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from deadiff_core import download as dl
from hub_standin import HubStandIn

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB standing in for the 9 GB file


@pytest.fixture
def hub(monkeypatch):
    standin = HubStandIn()
    standin.add(dl.DEADIFF.repo_id, dl.DEADIFF.filename, PAYLOAD)
    monkeypatch.setenv("HF_ENDPOINT", standin.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    yield standin
    standin.close()


def test_download_then_nothing_more(hub, tmp_path):
    folder = tmp_path / "models" / "deadiff"
    path = dl.download(dl.DEADIFF, folder)
    assert path == folder / "deadiff_v1.ckpt"
    assert path.read_bytes() == PAYLOAD
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # 0644 under the usual umask, as any model file
    assert len(hub.gets()) == 1, hub.requests
    seen = len(hub.file_requests())
    assert dl.download(dl.DEADIFF, folder) == path
    assert len(hub.file_requests()) == seen, "a file already in the folder costs no request"


def test_a_dropped_transfer_is_resumed_with_a_range_request(hub, tmp_path):
    """huggingface_hub writes what it received in blocks of DOWNLOAD_CHUNK_SIZE and, when the connection
    drops, asks for the rest from the end of the last whole block (a Range request)."""
    from huggingface_hub import constants

    block = constants.DOWNLOAD_CHUNK_SIZE
    payload = (PAYLOAD * (-(-block * 5 // 2) // len(PAYLOAD)))[: block * 5 // 2]
    hub.add(dl.DEADIFF.repo_id, dl.DEADIFF.filename, payload)
    hub.drop_after = block + 12345
    path = dl.download(dl.DEADIFF, tmp_path)
    assert path.read_bytes() == payload
    gets = hub.gets()
    assert len(gets) == 2 and gets[0][2] is None
    assert gets[1][2] == f"bytes={block}-", gets  # picked up after the first whole block, not from the start


def test_a_wrong_checksum_is_refused_and_the_file_removed(hub, tmp_path):
    hub.wrong_sha256 = True
    with pytest.raises(dl.DownloadError) as error:
        dl.download(dl.DEADIFF, tmp_path)
    message = str(error.value)
    assert "does not match the hub's checksum" in message
    assert hashlib.sha256(PAYLOAD).hexdigest() in message  # what arrived
    assert not (tmp_path / "deadiff_v1.ckpt").exists()
    hub.wrong_sha256 = False
    assert dl.download(dl.DEADIFF, tmp_path).read_bytes() == PAYLOAD, "a later try downloads it again"


def test_offline_mode_says_so_and_sends_nothing(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(dl.DownloadError) as error:
        dl.download(dl.DEADIFF, tmp_path)
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in str(error.value)
    assert "huggingface.co/qth/DEADiff" in str(error.value)
    assert hub.file_requests() == []


def test_free_disk_space_is_checked_before_the_first_byte(hub, tmp_path, monkeypatch):
    free = dl.shutil.disk_usage(tmp_path).free
    monkeypatch.setattr(dl.shutil, "disk_usage", lambda path: type("Usage", (), {"free": len(PAYLOAD) // 2})())
    with pytest.raises(dl.DownloadError) as error:
        dl.download(dl.DEADIFF, tmp_path)
    assert "not enough free disk space" in str(error.value) and free > 0
    assert hub.gets() == []


def test_missing_file_and_unknown_repo_are_named(hub, tmp_path):
    missing = dl.HubFile(dl.DEADIFF.repo_id, "nope.ckpt", "deadiff", 1, "test")
    with pytest.raises(dl.DownloadError) as error:
        dl.download(missing, tmp_path)
    assert "has no nope.ckpt" in str(error.value)
    with pytest.raises(dl.DownloadError) as error:
        dl.download(dl.SD15, tmp_path)
    assert "stable-diffusion-v1-5/stable-diffusion-v1-5" in str(error.value)
