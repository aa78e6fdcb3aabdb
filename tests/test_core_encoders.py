"""deadiff_core's encoders against the plain reference of docs/design.md §2-§4 (tests/reference_deadiff.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import deadiff_fakes
import reference_deadiff as ref
from deadiff_core import load_deadiff
from deadiff_core.preprocess import preprocess

IMAGES = {
    "batch of two RGB": lambda g: torch.rand(2, 64, 96, 3, generator=g),
    "gray": lambda g: torch.rand(1, 37, 50, 1, generator=g),
    "RGBA": lambda g: torch.rand(1, 300, 200, 4, generator=g),
    "tiny 1x1": lambda g: torch.rand(1, 1, 1, 3, generator=g),
}


def relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    sd = deadiff_fakes.make_official_state_dict(seed=11)
    path = deadiff_fakes.write_official_ckpt(tmp_path_factory.mktemp("ckpt") / "deadiff_v1.ckpt", sd)
    return sd, load_deadiff(path)


@pytest.mark.parametrize("branch", ["style", "content"])
@pytest.mark.parametrize("kind", sorted(IMAGES))
def test_encoder_matches_spec_reference(official, branch, kind):
    sd, model = official
    images = IMAGES[kind](torch.Generator().manual_seed(len(kind)))
    tokens = model.encoder.encode(images, branch)
    expected = ref.encode(sd, images, branch)
    assert tokens.shape == (images.shape[0], 16, 64)
    assert relative_error(tokens, expected) <= 1e-5


def test_batch_items_are_encoded_independently(official):
    """B images in, B token sets out: no averaging, and each equals encoding that image alone."""
    _, model = official
    images = torch.rand(3, 48, 48, 3, generator=torch.Generator().manual_seed(2))
    batch = model.encoder.encode(images, "style")
    for i in range(3):
        torch.testing.assert_close(
            batch[i : i + 1], model.encoder.encode(images[i : i + 1], "style"), rtol=1e-5, atol=1e-6
        )
    assert (batch[0] - batch[1]).abs().max() > 1e-3


def test_style_and_content_differ_and_text_ffn_matters(tmp_path, official):
    sd, model = official
    images = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(3))
    style, content = model.encoder.encode(images, "style"), model.encoder.encode(images, "content")
    assert (style - content).abs().max() > 1e-2
    # the text positions' feed-forward feeds the next layer's self-attention: changing it must show
    changed = dict(sd)
    key = "style_blip.Qformer.bert.encoder.layer.0.intermediate.dense.weight"
    changed[key] = sd[key] * 1.5
    other = load_deadiff(deadiff_fakes.write_official_safetensors(tmp_path / "ffn.safetensors", changed))
    assert relative_error(other.encoder.encode(images, "style"), style) > 1e-4
    assert relative_error(ref.encode(changed, images, "style"), style) > 1e-4


def test_preprocessing_follows_pil_bicubic_squash():
    """docs/design.md §2: PIL bicubic to 224x224 without crop. Our float path agrees with PIL on 8-bit images
    to within PIL's own 8-bit rounding (plus a little at hard edges, where PIL clips each pass)."""
    rng = np.random.default_rng(0)
    smooth = (rng.random((4, 6, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(smooth).resize((150, 90), Image.BICUBIC)
    array = np.array(image)
    ours = preprocess(torch.from_numpy(array).float().div(255).unsqueeze(0), 224)
    pil = np.asarray(image.resize((224, 224), Image.BICUBIC)).astype(np.float32) / 255
    pil = (torch.from_numpy(pil).permute(2, 0, 1).unsqueeze(0) - ref.MEAN) / ref.STD
    assert ours.shape == (1, 3, 224, 224)
    error = ((ours - pil) * ref.STD).abs()  # back in 0..1 pixel units
    assert error.mean() < 1 / 255 and error.max() < 4 / 255


def test_two_different_vision_copies_are_both_kept_and_used(tmp_path):
    sd = deadiff_fakes.make_official_state_dict(seed=12, identical_vision=False)
    model = load_deadiff(deadiff_fakes.write_official_ckpt(tmp_path / "twin.ckpt", sd))
    assert not model.config.shared_vision and sorted(model.encoder.vision) == ["content", "style"]
    images = torch.rand(1, 40, 40, 3, generator=torch.Generator().manual_seed(4))
    for branch in ("style", "content"):
        assert relative_error(model.encoder.encode(images, branch), ref.encode(sd, images, branch)) <= 1e-5


def test_identical_copies_are_shared_and_nothing_else_is_kept(official):
    sd, model = official
    assert model.config.shared_vision and list(model.encoder.vision) == ["shared"]
    kept = sum(p.numel() for p in model.parameters())
    deadiff_only = sum(
        v.numel()
        for k, v in sd.items()
        if (
            k.startswith(("style_", "content_proj"))
            or k.startswith("content_blip.Qformer.bert")
            or k == "content_blip.query_tokens"
            or ".i_to_" in k
        )
        and ".cls." not in k
        and not k.endswith("position_ids")
        and not k.startswith(("style_blip.itm", "style_blip.text_proj", "style_blip.vision_proj"))
        and k != "style_blip.temp"
    )
    # + the unused post_layernorm that transformers' CLIP module carries (2 * width)
    assert kept == deadiff_only + 2 * model.config.vision_width
