"""The encoders' reference options (resize_mode, pad_color, reference_mask), the preview and the
per-image progress, against the plain reference of SPEC §2 (tests/reference_deadiff.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import deadiff_fakes
import reference_deadiff as ref
from deadiff_core import load_deadiff
from deadiff_core.preprocess import CENTER_CROP, PAD, SQUASH, normalize, parse_color
from deadiff_core.reference import PREVIEW_DIM

RED = (1.0, 0.0, 0.0)


def relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    sd = deadiff_fakes.make_official_state_dict(seed=21)
    path = deadiff_fakes.write_official_ckpt(tmp_path_factory.mktemp("ckpt") / "deadiff_v1.ckpt", sd)
    model = load_deadiff(path)
    assert (model.config.image_size, model.config.patch_size) == (224, 32)  # a 7 x 7 grid of 32 px patches
    return sd, model


def rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def encode_as_before(model, images, branch):
    """DualEncoder.encode as it was before the options existed (commit 929ac55), step for step."""
    from deadiff_core.preprocess import CLIP_MEAN, CLIP_STD

    encoder = model.encoder
    x = images if images.ndim == 4 else images.unsqueeze(0)
    x = (x.expand(-1, -1, -1, 3) if x.shape[-1] == 1 else x[..., :3]).float().movedim(-1, 1)
    x = F.interpolate(x, size=(224, 224), mode="bicubic", antialias=True, align_corners=False).clamp(0.0, 1.0)
    x = (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        image_tokens = encoder.tower(branch)(x)
        qformer = encoder.qformers[branch]
        b = image_tokens.shape[0]
        out = qformer.bert(
            input_ids=qformer.text_ids.expand(b, -1),
            query_embeds=qformer.query_tokens.expand(b, -1, -1),
            encoder_hidden_states=image_tokens,
        ).last_hidden_state
        return encoder.projs[branch](out[:, : qformer.query_tokens.shape[1]])


# ------------------------------------------------------------------ the defaults do not move


@pytest.mark.parametrize("branch", ["style", "content"])
def test_defaults_are_bit_identical_to_the_encoder_before_the_options(official, branch):
    _, model = official
    for images in (rand(3, 64, 96, 3, seed=1), rand(1, 300, 200, 4, seed=2), rand(2, 37, 50, 1, seed=3)):
        before = encode_as_before(model, images, branch)
        assert torch.equal(model.encoder.encode(images, branch), before)
        assert torch.equal(
            model.encoder.encode(images, branch, resize_mode=SQUASH, pad_color="#000000", reference_mask=None), before
        )


def test_a_full_mask_and_a_square_image_change_nothing(official):
    """A mask that covers everything reads every token as without a mask (log 1 = 0 is added to each
    logit); so does one painted at 0.5 everywhere (weights are relative). A square image gives the
    same pixels whatever the resize_mode."""
    _, model = official
    wide, square = rand(2, 64, 96, 3, seed=4), rand(2, 80, 80, 3, seed=5)
    plain = model.encoder.encode(wide, "style")
    assert torch.equal(model.encoder.encode(wide, "style", reference_mask=torch.ones(64, 96)), plain)
    assert torch.equal(model.encoder.encode(wide, "style", reference_mask=torch.full((2, 64, 96), 0.5)), plain)
    squashed = model.encoder.encode(square, "content")
    for mode in (CENTER_CROP, PAD):
        assert torch.equal(model.encoder.encode(square, "content", resize_mode=mode, pad_color=RED), squashed)


# ------------------------------------------------------------------ each option against the plain reference

CASES = {  # name -> (images, resize_mode, mask); squares are whole multiples of 224 so the reference averages blocks
    "center crop, wide": (lambda: rand(2, 224, 320, 3, seed=6), CENTER_CROP, None),
    "center crop, tall, odd leftover": (lambda: rand(1, 301, 224, 3, seed=7), CENTER_CROP, None),
    "pad, wide": (lambda: rand(2, 150, 224, 3, seed=8), PAD, None),
    "pad, tall, odd leftover": (lambda: rand(1, 224, 97, 1, seed=9), PAD, None),
    "squash, hard mask": (lambda: rand(2, 224, 224, 3, seed=10), SQUASH, "hard"),
    "squash, soft mask, 2x size": (lambda: rand(1, 448, 448, 3, seed=11), SQUASH, "soft"),
    "center crop, hard mask": (lambda: rand(1, 224, 320, 3, seed=12), CENTER_CROP, "hard"),
    "pad, soft mask": (lambda: rand(2, 224, 150, 3, seed=13), PAD, "soft"),
}


def make_mask(kind, batch, height, width):
    if kind == "hard":  # a rectangle that cuts patches at odd places, different per image
        mask = torch.zeros(batch, height, width)
        for i in range(batch):
            mask[i, 20 + 30 * i : height - 45, 50 : width - 10 * i] = 1.0
        return mask
    ys = torch.linspace(0, 1, height).view(1, -1, 1)
    xs = torch.linspace(0, 1, width).view(1, 1, -1)
    return (torch.sin(6 * xs + 3 * ys + torch.arange(batch).view(-1, 1, 1)) * 0.8).clamp(0, 1)  # feathered, with zeros


@pytest.mark.parametrize("branch", ["style", "content"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_options_match_the_plain_reference(official, case, branch):
    sd, model = official
    make, mode, mask_kind = CASES[case]
    images = make()
    mask = None if mask_kind is None else make_mask(mask_kind, images.shape[0], *images.shape[1:3])
    tokens = model.encoder.encode(images, branch, resize_mode=mode, pad_color=RED, reference_mask=mask)
    expected = ref.encode_with_options(sd, images, branch, mode, RED, mask)
    assert relative_error(tokens, expected) <= 1e-5
    assert relative_error(tokens, ref.encode(sd, images, branch)) > 1e-3, "the option changes the tokens"


def test_the_mask_follows_the_crop(official):
    """With center crop, only the kept square counts: a mask on the cut-away strip is refused, and a
    mask that differs only there gives the same tokens."""
    _, model = official
    images = rand(1, 224, 320, 3, seed=14)  # the crop keeps columns 48..271
    inside = torch.zeros(224, 320)
    inside[:, 100:200] = 1
    outside_too = inside.clone()
    outside_too[:, :48] = 1
    outside_too[:, 272:] = 0.3
    a = model.encoder.encode(images, "style", resize_mode=CENTER_CROP, reference_mask=inside)
    assert torch.equal(a, model.encoder.encode(images, "style", resize_mode=CENTER_CROP, reference_mask=outside_too))
    cut_away = torch.zeros(224, 320)
    cut_away[:, :48] = 1
    with pytest.raises(ValueError, match="covers only what 'center crop' leaves out"):
        model.encoder.encode(images, "style", resize_mode=CENTER_CROP, reference_mask=cut_away)


def test_a_mask_of_another_size_is_stretched_over_the_image(official):
    _, model = official
    images = rand(1, 224, 224, 3, seed=15)
    mask = make_mask("hard", 1, 224, 224)
    doubled = mask.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)
    a = model.encoder.encode(images, "content", reference_mask=mask)
    torch.testing.assert_close(model.encoder.encode(images, "content", reference_mask=doubled), a, rtol=1e-6, atol=1e-6)


def test_pad_colour_is_used_and_parsed():
    assert parse_color("#FF8000") == parse_color("ff8000") == parse_color(0xFF8000) == (1.0, 128 / 255, 0.0)
    assert parse_color("#f80") == (1.0, 136 / 255, 0.0) and parse_color((0, 0.5, 1)) == (0.0, 0.5, 1.0)
    for bad in ("#12345", "red", 0x1000000, -1, (1, 2, 3), (0.5, 0.5), True):
        with pytest.raises(ValueError, match="pad_color"):
            parse_color(bad)


# ------------------------------------------------------------------ the preview


def tower_input(model, branch, call):
    """The pixel_values the vision tower receives during `call()`."""
    seen = []
    module = model.encoder.tower(branch).clip
    handle = module.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["pixel_values"]), with_kwargs=True
    )
    try:
        call()
    finally:
        handle.remove()
    return torch.cat(seen)


@pytest.mark.parametrize("mode", [SQUASH, CENTER_CROP, PAD])
def test_the_preview_is_exactly_what_the_tower_reads(official, mode):
    _, model = official
    images = rand(2, 120, 200, 3, seed=16)
    seen = tower_input(model, "style", lambda: model.encoder.encode(images, "style", resize_mode=mode, pad_color=RED))
    preview = model.encoder.preview(images, resize_mode=mode, pad_color=RED)
    assert preview.shape == (2, 224, 224, 3) and preview.min() >= 0 and preview.max() <= 1
    assert torch.equal(normalize(preview.movedim(-1, 1)), seen)
    assert torch.allclose(preview.movedim(-1, 1), ref.pixels_01(images, 224, mode, RED), atol=1e-6)
    if mode == PAD:  # the top band is the pad colour
        assert torch.allclose(preview[:, :5], torch.tensor(RED).expand(2, 5, 224, 3), atol=1e-6)


def test_the_preview_dims_the_patches_the_qformer_does_not_read(official):
    _, model = official
    images = rand(2, 224, 320, 3, seed=17)
    mask = torch.zeros(224, 320)
    mask[:, 48 : 48 + 64] = 1.0  # exactly the two left patch columns of the cropped square (32 px patches)
    mask[:112, 48 + 64 : 48 + 80] = 1.0  # half of the third column's upper patches' width
    kw = dict(resize_mode=CENTER_CROP)
    plain = model.encoder.preview(images, **kw)
    masked = model.encoder.preview(images, reference_mask=mask, **kw)
    seen = tower_input(model, "content", lambda: model.encoder.encode(images, "content", reference_mask=mask, **kw))
    assert torch.equal(normalize(plain.movedim(-1, 1)), seen), "a mask changes what the Q-Former reads, not the pixels"
    assert torch.equal(masked[:, :, :64], plain[:, :, :64]), "fully read patches are shown as they are"
    assert torch.equal(masked[:, :, 96:], plain[:, :, 96:] * PREVIEW_DIM), "unread patches are dimmed"
    assert torch.equal(masked[:, :96, 64:96], plain[:, :96, 64:96] * (PREVIEW_DIM + (1 - PREVIEW_DIM) * 0.5))


# ------------------------------------------------------------------ progress and errors


def test_progress_is_reported_per_image_and_each_image_is_encoded_as_alone(official):
    _, model = official
    images = rand(4, 64, 80, 3, seed=18)
    mask = make_mask("soft", 4, 64, 80)
    calls = []
    tokens = model.encoder.encode(
        images, "style", resize_mode=PAD, reference_mask=mask, progress=lambda done, total: calls.append((done, total))
    )
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    for i in range(4):
        alone = model.encoder.encode(images[i : i + 1], "style", resize_mode=PAD, reference_mask=mask[i : i + 1])
        assert torch.equal(tokens[i : i + 1], alone)
    torch.testing.assert_close(
        tokens, model.encoder.encode(images, "style", resize_mode=PAD, reference_mask=mask), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(
    "mask,words",
    [
        (torch.zeros(64, 80), "reference_mask is all 0: the encoder would read nothing"),
        (torch.zeros(3, 64, 80), "reference_mask has 3 masks for 2 reference images"),
        (torch.zeros(1, 1, 64, 80), r"reference_mask must be a MASK of shape \(height, width\)"),
        (torch.zeros(0, 64, 80), r"reference_mask must be a MASK of shape"),
    ],
)
def test_bad_masks_are_refused_clearly(official, mask, words):
    _, model = official
    with pytest.raises(ValueError, match=words):
        model.encoder.encode(
            rand(2 if mask.ndim == 3 and mask.shape[0] == 3 else 1, 64, 80, 3), "style", reference_mask=mask
        )


def test_an_empty_mask_names_its_image_and_nan_counts_as_zero(official):
    _, model = official
    mask = torch.ones(2, 64, 80)
    mask[1] = float("nan")
    with pytest.raises(ValueError, match="reference_mask of reference image 2 is all 0"):
        model.encoder.encode(rand(2, 64, 80, 3), "style", reference_mask=mask)


def test_unknown_resize_mode_is_refused(official):
    _, model = official
    with pytest.raises(ValueError, match="resize_mode must be one of squash, center crop, pad"):
        model.encoder.encode(rand(1, 8, 8, 3), "style", resize_mode="stretch")
