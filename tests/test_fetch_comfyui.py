"""scripts/fetch_comfyui.py --archive: how the test matrix gets a ComfyUI from a source archive
(COMFYUI_ARCHIVE), unpacked once into the cache outside the clone, with the sha256 of known archives checked."""

from __future__ import annotations

import importlib.util
import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "fetch_comfyui.py"
spec = importlib.util.spec_from_file_location("fetch_comfyui_under_test", SCRIPT)
fetch_comfyui = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fetch_comfyui)


def make_archive(path: Path, version: str, extra: dict | None = None, top: str = "ComfyUI-9.9.9") -> Path:
    files = {"comfyui_version.py": f'__version__ = "{version}"\n', "main.py": "print('main')\n", **(extra or {})}
    with tarfile.open(path, "w:gz") as tf:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def run_script(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)


def test_unpacks_into_the_cache_once_and_again_when_the_archive_changes(tmp_path):
    cache = tmp_path / "cache"
    archive = make_archive(tmp_path / "snapshot.tar.gz", "9.9.9")
    result = run_script("--archive", str(archive), str(cache))
    assert result.returncode == 0, result.stderr
    tree = Path(result.stdout.strip())
    assert tree == cache / "ComfyUI-9.9.9"
    assert fetch_comfyui.installed_version(str(tree)) == "9.9.9"
    assert "sha256" in result.stderr  # an unknown archive: its sha256 is shown, not checked

    (tree / "marker").write_text("kept while the archive is the same")
    assert run_script("--archive", str(archive), str(cache)).stdout.strip() == str(tree)
    assert (tree / "marker").exists()

    make_archive(archive, "9.9.9", extra={"new.py": "x = 1\n"})
    assert run_script("--archive", str(archive), str(cache)).stdout.strip() == str(tree)
    assert (tree / "new.py").exists() and not (tree / "marker").exists()
    assert sorted(p.name for p in cache.iterdir()) == ["ComfyUI-9.9.9", "ComfyUI-9.9.9.archive-sha256"]


def test_a_known_archive_with_another_sha256_is_refused(tmp_path):
    (name,) = fetch_comfyui.KNOWN_ARCHIVES
    archive = make_archive(tmp_path / name, "0.33.0", top="ComfyUI-0.33.0")
    result = run_script("--archive", str(archive), str(tmp_path / "cache"))
    assert result.returncode != 0
    assert "sha256" in result.stderr and fetch_comfyui.KNOWN_ARCHIVES[name] in result.stderr
    assert not (tmp_path / "cache" / "ComfyUI-0.33.0").exists()


def test_an_archive_without_comfyui_is_refused(tmp_path):
    archive = tmp_path / "other.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo("project/readme.txt")
        info.size = 2
        tf.addfile(info, io.BytesIO(b"hi"))
    result = run_script("--archive", str(archive), str(tmp_path / "cache"))
    assert result.returncode != 0 and "comfyui_version.py" in result.stderr


@pytest.mark.parametrize("member", ["../escape.py", "/abs.py"])
def test_members_outside_the_archive_folder_are_refused(tmp_path, member):
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for name in ("ComfyUI-1.0.0/comfyui_version.py", member):
            data = b'__version__ = "1.0.0"\n'
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    result = run_script("--archive", str(archive), str(tmp_path / "cache"))
    assert result.returncode != 0
    assert not (tmp_path / "escape.py").exists() and not Path("/abs.py").exists()
