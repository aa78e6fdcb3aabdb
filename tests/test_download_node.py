"""(Down)load DEADiff Model inside a real ComfyUI: nothing is fetched until a prompt with the node runs; then
deadiff_v1.ckpt comes from the hub (a stand-in on 127.0.0.1 behind HF_ENDPOINT) into models/deadiff with
ComfyUI's progress bar, and the node outputs the loaded DEADiff model; a second prompt only loads it."""

from __future__ import annotations

import pytest

import deadiff_fakes
from graphs import Graph
from hub_standin import HubStandIn

NODE = "DEADiffDownloadModel"


@pytest.fixture
def download_node(comfy):
    """The node class as ComfyUI registered it from the pack's extension."""
    return comfy.nodes.NODE_CLASS_MAPPINGS[NODE]


@pytest.fixture
def hub(monkeypatch, tmp_path):
    source = tmp_path / "hub-files"
    source.mkdir()
    deadiff_fakes.place(source, "deadiff_v1.ckpt", seed=0)
    standin = HubStandIn()
    standin.add("qth/DEADiff", "deadiff_v1.ckpt", (source / "deadiff_v1.ckpt").read_bytes())
    monkeypatch.setenv("HF_ENDPOINT", standin.url)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield standin
    standin.close()


def test_downloads_on_run_with_progress_then_only_loads(comfy, download_node, hub):
    import comfy.utils as comfy_utils  # (not `import comfy.utils`: that would rebind the fixture's name)

    target = comfy.base / "models" / "deadiff" / "deadiff_v1.ckpt"
    target.unlink(missing_ok=True)
    assert hub.file_requests() == [], "registering the node downloads nothing"
    g = Graph()
    loaded = g.node(NODE, file="deadiff_v1.ckpt", convert_to_compact=False)
    g.node("DEADiffTest_Keep", value=loaded, key="downloaded-deadiff")
    steps = []
    comfy_utils.set_progress_bar_global_hook(
        lambda value, total, preview=None, node_id=None, **_: steps.append((node_id, value, total))
    )
    try:
        comfy.run(g.prompt)
    finally:
        comfy_utils.set_progress_bar_global_hook(None)
    try:
        assert target.read_bytes() == hub.files[("qth/DEADiff", "deadiff_v1.ckpt")]
        assert len(hub.gets()) == 1
        size = target.stat().st_size
        assert steps and steps[-1] == (loaded.id, size, size), steps[-3:]  # ComfyUI's bar reached the end
        kept = comfy.module("DEADiffTest_Keep").CAPTURED["downloaded-deadiff"]
        assert type(kept).__name__ == "ManagedDEADiff" and kept.name == "deadiff_v1.ckpt"

        seen = len(hub.file_requests())
        comfy.run(g.prompt)
        assert len(hub.file_requests()) == seen, "a second run only loads the file"
    finally:
        target.unlink(missing_ok=True)


def test_offline_mode_fails_the_node_with_the_reason(comfy, download_node, hub, monkeypatch):
    from conftest import GraphError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (comfy.base / "models" / "deadiff" / "deadiff_v1.ckpt").unlink(missing_ok=True)
    g = Graph()
    g.node("DEADiffTest_Keep", value=g.node(NODE, file="deadiff_v1.ckpt", convert_to_compact=False), key="offline")
    with pytest.raises(GraphError) as error:
        comfy.run(g.prompt)
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in str(error.value)
    assert hub.file_requests() == []
