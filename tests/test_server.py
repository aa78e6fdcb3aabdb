"""The pack inside the real ComfyUI server (main.py --cpu), as a user's browser talks to it."""

from __future__ import annotations

import pytest

import deadiff_fakes
from graphs import Graph

pytestmark = pytest.mark.server

PACK_NODES = {
    "DEADiffModelLoader": "Load DEADiff Model",
    "DEADiffStyleEncoder": "DEADiff Style Encoder",
    "DEADiffContentEncoder": "DEADiff Content Encoder",
    "DEADiffApply": "Apply Disentangled Conditioning",
    "DEADiffMixStyles": "DEADiff Mix Styles",
    "DEADiffMixContents": "DEADiff Mix Contents",
    "DEADiffSaveTokens": "DEADiff Save Tokens",
    "DEADiffLoadStyle": "DEADiff Load Style",
    "DEADiffLoadContent": "DEADiff Load Content",
    "DEADiffRouting": "DEADiff Layer Routing",
    "DEADiffDownloadModel": "(Down)load DEADiff Model",
}


@pytest.fixture(scope="module")
def server_with_weights(comfy_server):
    deadiff_fakes.place(comfy_server.base / "models" / "deadiff", "deadiff_v1.ckpt", seed=0)
    return comfy_server


def test_object_info_lists_the_nodes_with_tooltips(server_with_weights):
    info = server_with_weights.get("/object_info")
    for node_id, display in PACK_NODES.items():
        assert node_id in info, f"{node_id} missing from /object_info"
        node = info[node_id]
        assert node["display_name"] == display
        assert node["category"] == "DEADiff"
        assert len(node["description"]) > 40
        for section in ("required", "optional"):
            for name, spec in node["input"].get(section, {}).items():
                assert spec[1].get("tooltip"), f"{node_id}.{name} has no tooltip"
    loader_input = info["DEADiffModelLoader"]["input"]["required"]["deadiff_name"]
    assert loader_input[0] == "COMBO" and "deadiff_v1.ckpt" in loader_input[1]["options"]
    apply = info["DEADiffApply"]["input"]
    assert list(apply["required"]) == ["model", "deadiff", "style_weight", "content_weight", "start_at", "end_at"]
    assert list(apply["optional"]) == ["style", "content", "attn_mask", "negative_style", "negative_content", "routing"]
    encoder = info["DEADiffStyleEncoder"]["input"]
    assert list(encoder["required"]) == ["deadiff", "image"], "batch_mode is optional: old workflows still load"
    assert encoder["optional"]["batch_mode"][1]["default"] == "concatenate"
    assert info["DEADiffSaveTokens"]["output_node"] is True
    assert apply["required"]["style_weight"][1]["default"] == 1.0
    assert info["DEADiffApply"]["output"] == ["MODEL"]


def test_ksampler_graph_end_to_end(server_with_weights):
    g = Graph()
    tiny = g.node("DEADiffTest_TinySD15", seed=0)
    pos = g.node("CLIPTextEncode", clip=tiny[1], text="a castle at dusk")
    neg = g.node("CLIPTextEncode", clip=tiny[1], text="lowres")
    loader = g.node("DEADiffModelLoader", deadiff_name="deadiff_v1.ckpt")
    image = g.node("DEADiffTest_ImageFromSeed", seed=7, width=120, height=90, batch_size=1, channels=3)
    style = g.node("DEADiffStyleEncoder", deadiff=loader, image=image)
    apply = g.node(
        "DEADiffApply",
        model=tiny[0],
        deadiff=loader,
        style_weight=1.0,
        content_weight=1.0,
        start_at=0.0,
        end_at=1.0,
        style=style,
    )
    latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=1)
    sample = g.node(
        "KSampler",
        model=apply,
        seed=3,
        steps=4,
        cfg=8.0,
        sampler_name="ddim",
        scheduler="ddim_uniform",
        positive=pos,
        negative=neg,
        latent_image=latent,
        denoise=1.0,
    )
    decoded = g.node("VAEDecode", samples=sample, vae=tiny[2])
    g.node("SaveImage", images=decoded, filename_prefix="deadiff_server")
    entry = server_with_weights.run(g.prompt)
    images = [img for out in entry["outputs"].values() for img in out.get("images", [])]
    assert len(images) == 1
    assert (server_with_weights.base / "output" / images[0]["filename"]).stat().st_size > 0


def test_bad_file_fails_the_prompt_and_the_server_keeps_serving(server_with_weights):
    bad = server_with_weights.base / "models" / "deadiff" / "broken.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    g = Graph()
    tiny = g.node("DEADiffTest_TinySD15", seed=0)
    pos = g.node("CLIPTextEncode", clip=tiny[1], text="a castle")
    loader = g.node("DEADiffModelLoader", deadiff_name="broken.ckpt")
    apply = g.node(
        "DEADiffApply", model=tiny[0], deadiff=loader, style_weight=1.0, content_weight=1.0, start_at=0.0, end_at=1.0
    )
    latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=1)
    sample = g.node(
        "KSampler",
        model=apply,
        seed=3,
        steps=1,
        cfg=1.0,
        sampler_name="euler",
        scheduler="normal",
        positive=pos,
        negative=pos,
        latent_image=latent,
        denoise=1.0,
    )
    g.node("DEADiffTest_CaptureLatent", samples=sample, key="after-bad")
    with pytest.raises(Exception) as failure:
        server_with_weights.run(g.prompt)
    assert "broken.ckpt" in str(failure.value)
    # the next prompt is served normally
    test_ksampler_graph_end_to_end(server_with_weights)
