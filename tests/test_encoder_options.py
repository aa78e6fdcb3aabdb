"""The encoder options and their node outputs in the real ComfyUI: resize_mode, pad_color and
reference_mask reach the core encoder unchanged, the preview output is exactly what the vision tower
reads, the defaults give the tokens the encoder gave before these options existed, the loader shows
progress and logs its time, and Save Tokens reports the name Load Style lists.

The math of each option is checked against the plain reference in tests/test_core_preprocess_options.py;
here the question is whether the nodes pass the user's choices through and show what they did.
"""

from __future__ import annotations

import logging

import pytest
import torch

import deadiff_fakes
from graphs import Graph

NAME = "tiny_options.ckpt"


@pytest.fixture(scope="module")
def setup(comfy):
    deadiff_fakes.write_official_ckpt(
        comfy.base / "models" / "deadiff" / NAME, deadiff_fakes.make_official_state_dict(seed=31)
    )
    g = Graph()
    loader = g.node("DEADiffModelLoader", deadiff_name=NAME)
    images = g.node("DEADiffTest_ImageFromSeed", seed=5, width=56, height=32, batch_size=2, channels=3)
    mask = g.node(
        "DEADiffTest_MaskFromSeed", seed=6, width=56, height=32, batch_size=1, low=0.0, high=1.0, nan_fraction=0.0
    )
    kept = {"deadiff": loader, "images": images, "mask": mask}
    for name, node in kept.items():
        g.node("DEADiffTest_Keep", value=node, key=f"options-{name}")
    out = comfy.run(g.prompt)
    return {name: out[node.id][0] for name, node in kept.items()}


def run_encoder(comfy, branch: str, **options):
    """The encoder node through the real executor: (tokens, preview)."""
    g = Graph()
    loader = g.node("DEADiffModelLoader", deadiff_name=NAME)
    images = g.node("DEADiffTest_ImageFromSeed", seed=5, width=56, height=32, batch_size=2, channels=3)
    inputs = {"deadiff": loader, "image": images, **options}
    if inputs.get("reference_mask") is True:
        inputs["reference_mask"] = g.node(
            "DEADiffTest_MaskFromSeed", seed=6, width=56, height=32, batch_size=1, low=0.0, high=1.0, nan_fraction=0.0
        )
    encoder = g.node(f"DEADiff{branch.capitalize()}Encoder", **inputs)
    g.node("DEADiffTest_Keep", value=encoder[0], key="options-tokens")
    g.node("DEADiffTest_Keep", value=encoder[1], key="options-preview")
    out = comfy.run(g.prompt)
    return out[encoder.id][0], out[encoder.id][1]


@pytest.mark.parametrize("branch", ["style", "content"])
def test_defaults_give_the_tokens_of_the_encoder_before_the_options(comfy, setup, branch):
    tokens, preview = run_encoder(comfy, branch)
    encoder = setup["deadiff"].model.encoder
    # the call the node made before resize_mode / reference_mask existed (one pass, squash)
    before = torch.cat([encoder.encode(setup["images"][i : i + 1], branch) for i in range(2)])
    assert torch.equal(tokens.for_attention(), before.reshape(1, -1, before.shape[-1]))
    assert preview.shape == (2, 224, 224, 3) and preview.dtype == torch.float32


@pytest.mark.parametrize("resize_mode", ["center crop", "pad"])
def test_resize_mode_and_mask_reach_the_encoder_and_change_the_tokens(comfy, setup, resize_mode):
    tokens, preview = run_encoder(comfy, "style", resize_mode=resize_mode, pad_color="#204060", reference_mask=True)
    encoder = setup["deadiff"].model.encoder
    expected = torch.cat(
        [
            encoder.encode(
                setup["images"][i : i + 1],
                "style",
                resize_mode=resize_mode,
                pad_color="#204060",
                reference_mask=setup["mask"],
            )
            for i in range(2)
        ]
    )
    assert torch.equal(tokens.for_attention(), expected.reshape(1, -1, expected.shape[-1]))
    squashed, _ = run_encoder(comfy, "style")
    assert not torch.allclose(tokens.for_attention(), squashed.for_attention(), rtol=1e-3, atol=1e-4)
    # the preview is the picture the tower reads, with the patches the mask leaves out dimmed
    reference = encoder.prepare(setup["images"], resize_mode, "#204060", setup["mask"])
    assert torch.equal(preview, reference.preview().float())


def test_pad_uses_the_chosen_colour_in_the_preview(comfy):
    _, preview = run_encoder(comfy, "style", resize_mode="pad", pad_color="#ff0000")
    # 56x32 padded to 56x56: the top rows are padding, pure red after the resize
    top = preview[:, 0, :, :]
    torch.testing.assert_close(top, torch.tensor([1.0, 0.0, 0.0]).expand_as(top))


@pytest.mark.parametrize(
    "change, words",
    [
        ({"resize_mode": "stretch"}, "Value not in list: resize_mode"),
        ({"pad_color": "gray"}, "pad_color must be a hex colour"),
    ],
)
def test_bad_options_are_refused_when_the_prompt_is_queued(comfy, change, words):
    g = Graph()
    loader = g.node("DEADiffModelLoader", deadiff_name=NAME)
    images = g.node("DEADiffTest_ImageFromSeed", seed=5, width=56, height=32, batch_size=1, channels=3)
    encoder = g.node("DEADiffStyleEncoder", deadiff=loader, image=images, **change)
    g.node("DEADiffTest_Keep", value=encoder, key="options-refused")
    valid = comfy.validate(g.prompt)
    assert valid[0] is False
    assert words in str(valid), valid


def test_loader_logs_its_time_and_the_compact_files_gain(comfy, caplog):
    import comfy.utils as comfy_utils

    loader = comfy.nodes.NODE_CLASS_MAPPINGS["DEADiffModelLoader"]
    updates = []
    previous = comfy_utils.PROGRESS_BAR_HOOK
    comfy_utils.set_progress_bar_global_hook(lambda value, total, *_, **__: updates.append((value, total)))
    try:
        with caplog.at_level(logging.INFO):
            loader.execute(NAME)
    finally:
        comfy_utils.set_progress_bar_global_hook(previous)
    assert updates and updates[-1] == (100, 100)
    values = [v for v, _ in updates]
    assert values == sorted(values) and len(values) == len(set(values)) <= 101
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"DEADiff: loaded {NAME} in ")]
    assert len(lines) == 1 and "compact file from deadiff-convert would load about" in lines[0]


def test_save_tokens_reports_the_name_load_style_lists(comfy, setup):
    g = Graph()
    loader = g.node("DEADiffModelLoader", deadiff_name=NAME)
    images = g.node("DEADiffTest_ImageFromSeed", seed=5, width=56, height=32, batch_size=1, channels=3)
    encoder = g.node("DEADiffStyleEncoder", deadiff=loader, image=images)
    save = g.node("DEADiffSaveTokens", tokens=encoder, filename_prefix="deadiff/options_test")
    g.node("DEADiffTest_Keep", value=encoder, key="options-saved")
    out = comfy.run(g.prompt)
    (listed,) = out[save.id]
    assert listed.startswith("options_test_") and listed.endswith(".safetensors [output]")
    g2 = Graph()
    loader2 = g2.node("DEADiffModelLoader", deadiff_name=NAME)
    load = g2.node("DEADiffLoadStyle", deadiff=loader2, tokens_file=listed)
    g2.node("DEADiffTest_Keep", value=load, key="options-loaded")
    loaded = comfy.run(g2.prompt)[load.id][0]
    assert torch.equal(loaded.for_attention(), out[encoder.id][0].for_attention())
