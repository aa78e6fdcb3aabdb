"""`deadiff-run --server URL --server URL`: a batch queued on two real ComfyUI servers (main.py on loopback,
as tests/conftest.py starts them) through ComfyUI's HTTP API, spread over both, and the same seed giving
the same picture as a run in this machine's process. The servers load this pack and the test pack; the
runner's test hook swaps Load Checkpoint for the test pack's tiny SD1.5 in what it queues."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import deadiff_fakes
from conftest import start_server, stop_server
from test_runner import run_cli, write_reference

pytestmark = [pytest.mark.server, pytest.mark.slow]


@pytest.fixture(scope="module")
def two_servers():
    started, errors = [], []

    def start(prefix):
        try:
            started.append(start_server(prefix))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=start, args=(f"deadiff-runner-server{i}-",)) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        if errors:
            raise errors[0]
        for server in started:
            deadiff_fakes.place(server.base / "models" / "deadiff", "deadiff_v1.ckpt", seed=0)
        yield started
    finally:
        for server in started:
            stop_server(server)


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as picture:
        return np.asarray(picture.convert("RGB"))


def test_a_batch_spreads_over_two_servers_and_matches_the_local_run(two_servers, tmp_path):
    style = write_reference(tmp_path / "style.png", seed=4)
    small = ("--steps", "2", "--width", "64", "--height", "64", "--seed", "5")
    urls = [arg for server in two_servers for arg in ("--server", server.url)]
    remote = run_cli(
        *urls,
        "--style",
        str(style),
        "--prompt",
        "a red barn",
        "--prompt",
        "a blue boat",
        "--prompt",
        "a green hill",
        *small,
        "--output",
        str(tmp_path / "remote") + "/",
        test_hook=True,
    )
    assert remote.returncode == 0, remote.stderr[-4000:]
    written = [Path(line) for line in remote.stdout.strip().splitlines()]
    assert len(written) == 3 and all(p.is_file() for p in written)
    summary = next(line for line in remote.stderr.splitlines() if "jobs done" in line)
    assert "3 of 3 jobs done" in summary and "on 2 server(s)" in summary
    counts = [int(summary.split(f"{server.url}: ")[1].split(",")[0].split(")")[0]) for server in two_servers]
    assert sum(counts) == 3 and min(counts) >= 1, summary  # both servers drew
    for server in two_servers:  # the reference went up through /upload/image, as the front end sends it
        assert (server.base / "input" / "style.png").read_bytes() == style.read_bytes()

    first = next(p for p in written if json.loads(Image.open(p).text["deadiff_job"])["prompt"] == "a red barn")
    with Image.open(first) as picture:
        assert json.loads(picture.text["deadiff_job"])["seed"] == 5
        assert any(n["type"] == "Note" for n in json.loads(picture.text["workflow"])["nodes"])

    base = tmp_path / "local"
    (base / "models" / "deadiff").mkdir(parents=True)
    deadiff_fakes.place(base / "models" / "deadiff", "deadiff_v1.ckpt", seed=0)
    local = run_cli(
        "--style",
        str(style),
        "--prompt",
        "a red barn",
        *small,
        "--output",
        str(tmp_path / "local.png"),
        base=base,
        test_hook=True,
    )
    assert local.returncode == 0, local.stderr[-4000:]
    assert np.array_equal(pixels(tmp_path / "local.png"), pixels(first)), "same seed, same picture"


def test_server_problems_are_named(two_servers, tmp_path):
    style = write_reference(tmp_path / "style.png", seed=4)
    missing = run_cli(
        "--server", two_servers[0].url, "--style", str(style), "--set", "2.deadiff_name=other.ckpt", test_hook=True
    )
    assert missing.returncode == 2
    assert f"{two_servers[0].url} has no deadiff/other.ckpt (node 2, Load DEADiff Model)" in missing.stderr
    nobody = run_cli("--server", "http://127.0.0.1:9", "--style", str(style))
    assert nobody.returncode == 2 and "no ComfyUI answers there" in nobody.stderr
    assert "Traceback" not in nobody.stderr
