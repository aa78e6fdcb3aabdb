"""Property-based tests (hypothesis) of the checkpoint reader's shape inference, the reference-image
preprocessing and the mask resizing: plain torch, no ComfyUI. Every test is derandomized (the same
examples on every run, so CI is reproducible) and runs at most `max_examples` examples, the figure
docs/reliability.md gives for it.
"""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import deadiff_fakes
from deadiff_core import DEADiffCheckpointError, load_deadiff
from deadiff_core.checkpoint import expected_shapes, is_kept, is_vision
from deadiff_core.config import count_layers, infer_config
from deadiff_core.masks import as_mask_batch, resize_to_grid
from deadiff_core.preprocess import CLIP_MEAN, CLIP_STD, preprocess
from deadiff_core.sites import SITES

EXAMPLES = {  # test -> max_examples (docs/reliability.md quotes these; a test checks it does)
    "test_shape_inference_round_trips": 200,
    "test_count_layers_counts_the_consecutive_run_from_zero": 100,
    "test_any_dimensions_load_and_encode_or_are_refused_clearly": 40,
    "test_any_single_wrong_shape_is_refused_and_named": 150,
    "test_garbage_and_truncated_files_are_refused_clearly": 150,
    "test_flipped_bytes_load_or_are_refused_clearly": 100,
    "test_preprocess_properties": 100,
    "test_preprocess_refuses_nan_and_inf_pixels": 50,
    "test_mask_resizing_properties": 150,
    "test_mask_shrinking_by_whole_factors_keeps_each_cells_share": 100,
    "test_masks_of_impossible_shapes_are_refused": 50,
    "test_mask_batches_are_always_3d_float": 50,
}


def config(name):
    return settings(
        max_examples=EXAMPLES[name],
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# ------------------------------------------------------------------ checkpoint shape inference


@st.composite
def deadiff_dims(draw):
    patch = draw(st.sampled_from([7, 14, 16, 32]))
    return dict(
        vision_width=64 * draw(st.integers(1, 3)),
        vision_layers=draw(st.integers(1, 4)),
        patch_size=patch,
        image_size=patch * draw(st.integers(1, 8)),
        qformer_hidden=64 * draw(st.integers(1, 2)),
        qformer_layers=draw(st.integers(1, 4)),
        qformer_intermediate=draw(st.integers(8, 300)),
        num_query_tokens=draw(st.integers(1, 32)),
        vocab_size=draw(st.integers(4181, 5000)),
        max_positions=draw(st.integers(3, 64)),
        proj_intermediate=draw(st.integers(8, 300)),
        site_widths={s.name: 8 * draw(st.integers(1, 160)) for s in SITES},
    )


def kept_shapes(dims, shared: bool) -> dict:
    shapes = {k: shape for k, (shape, _) in deadiff_fakes.official_shapes(**dims).items() if is_kept(k)}
    if shared:  # the compact layout: one vision tower
        shapes = {k: v for k, v in shapes.items() if not (k.startswith("content_blip.") and is_vision(k))}
    return shapes


@config("test_shape_inference_round_trips")
@given(dims=deadiff_dims(), shared=st.booleans())
def test_shape_inference_round_trips(dims, shared):
    """Any DEADiff dimensions -> the official key layout -> infer_config gives back exactly those
    dimensions, and expected_shapes(config) is exactly the file's kept keys and shapes."""
    shapes = kept_shapes(dims, shared)
    c = infer_config(shapes, shared_vision=shared)
    assert (c.vision_width, c.vision_layers, c.patch_size, c.image_size) == (
        dims["vision_width"],
        dims["vision_layers"],
        dims["patch_size"],
        dims["image_size"],
    )
    assert (c.qformer_hidden, c.qformer_layers, c.qformer_intermediate, c.num_query_tokens) == (
        dims["qformer_hidden"],
        dims["qformer_layers"],
        dims["qformer_intermediate"],
        dims["num_query_tokens"],
    )
    assert (c.vocab_size, c.max_positions, c.proj_intermediate) == (
        dims["vocab_size"],
        dims["max_positions"],
        dims["proj_intermediate"],
    )
    assert c.encoder_hidden == dims["vision_width"] and c.context_dim == dims["qformer_hidden"]
    assert c.site_widths == dims["site_widths"]
    assert c.num_positions == (dims["image_size"] // dims["patch_size"]) ** 2 + 1
    assert expected_shapes(c) == shapes


@config("test_count_layers_counts_the_consecutive_run_from_zero")
@given(present=st.sets(st.integers(0, 30), max_size=30), prefix=st.sampled_from(["a.layer.", "x.resblocks."]))
def test_count_layers_counts_the_consecutive_run_from_zero(present, prefix):
    keys = [f"{prefix}{i}.weight" for i in present] + [f"{prefix}{i}.bias" for i in present] + ["other.0.weight"]
    expected = next(n for n in range(32) if n not in present)
    assert count_layers(keys, prefix) == expected


@config("test_any_dimensions_load_and_encode_or_are_refused_clearly")
@given(
    vision_width=st.sampled_from([16, 48, 64, 96, 128]),
    hidden=st.sampled_from([16, 32, 64, 80, 128]),
    vocab=st.sampled_from([100, 2807, 4180, 4181, 4300]),
    positions=st.integers(1, 6),
    queries=st.integers(1, 5),
    patch=st.sampled_from([8, 16]),
    grid=st.integers(1, 4),
)
def test_any_dimensions_load_and_encode_or_are_refused_clearly(
    vision_width, hidden, vocab, positions, queries, patch, grid
):
    """A self-consistent file at any dimensions, even ones no DEADiff model has: it loads and both
    encoders give finite (1, queries, hidden) tokens, or it is refused at load with a
    DEADiffCheckpointError naming the file. Never a bare error later, at the first encode."""
    sd = deadiff_fakes.make_official_state_dict(
        seed=3,
        frozen_parts=False,
        vision_width=vision_width,
        vision_layers=1,
        patch_size=patch,
        image_size=patch * grid,
        qformer_hidden=hidden,
        qformer_layers=1,
        qformer_intermediate=32,
        num_query_tokens=queries,
        vocab_size=vocab,
        max_positions=positions,
        model_channels=32,
    )
    path = write_small("dims.safetensors", sd)
    try:
        model = load_deadiff(path)
    except DEADiffCheckpointError as error:
        assert str(error).startswith(path + ": ")
        assert vision_width % 64 or hidden % 64 or vocab <= 4180 or positions < 3, f"refused a valid file: {error}"
        return
    image = torch.rand(1, 20, 30, 3, generator=torch.Generator().manual_seed(0))
    for branch in ("style", "content"):
        tokens = model.encoder.encode(image, branch)
        assert tokens.shape == (1, queries, hidden) and torch.isfinite(tokens).all()


# A small fixed model for the file-level properties: every example writes and reads a real file.
SMALL = dict(
    vision_width=64,
    vision_layers=2,
    patch_size=16,
    image_size=64,
    qformer_hidden=64,
    qformer_layers=2,
    qformer_intermediate=96,
    num_query_tokens=4,
    vocab_size=4200,
    max_positions=8,
    model_channels=32,
)
SMALL_SD = deadiff_fakes.make_official_state_dict(seed=2, frozen_parts=False, **SMALL)
SMALL_KEPT = sorted(k for k in SMALL_SD if is_kept(k))
# the tensors infer_config reads each dimension from: a wrong shape there shifts the blame to the
# tensors that follow it, so only for the others must the error name the changed tensor itself
SOURCES = {
    "style_blip.visual_encoder.conv1.weight",
    "style_blip.visual_encoder.positional_embedding",
    "style_blip.query_tokens",
    "style_blip.Qformer.bert.embeddings.word_embeddings.weight",
    "style_blip.Qformer.bert.embeddings.position_embeddings.weight",
    "style_blip.Qformer.bert.encoder.layer.0.intermediate.dense.weight",
    "style_blip.Qformer.bert.encoder.layer.0.crossattention.self.key.weight",
    "style_proj_layer.dense1.weight",
    *(s.checkpoint_prefix + "i_to_k.weight" for s in SITES),
}


def write_small(name: str, sd: dict) -> str:
    folder = tempfile.mkdtemp(prefix="deadiff-prop-")
    return str(deadiff_fakes.write_official_safetensors(os.path.join(folder, name), sd))


@config("test_any_single_wrong_shape_is_refused_and_named")
@given(key=st.sampled_from(SMALL_KEPT), data=st.data())
def test_any_single_wrong_shape_is_refused_and_named(key, data):
    """Change one kept tensor's shape (one axis longer/shorter, or an axis added/removed): the file is
    refused with a DEADiffCheckpointError naming the file, and the changed tensor itself when it is
    not one the dimensions are read from. Never another exception, never a silent load."""
    shape = list(SMALL_SD[key].shape)
    kind = data.draw(st.sampled_from(["resize", "add axis", "drop axis"] if shape else ["add axis"]))
    if kind == "resize":
        axis = data.draw(st.integers(0, len(shape) - 1))
        shape[axis] = data.draw(st.integers(0, 2 * shape[axis] + 2).filter(lambda n: n != shape[axis]))
    elif kind == "add axis":
        shape.insert(data.draw(st.integers(0, len(shape))), data.draw(st.integers(1, 3)))
    else:
        shape.pop(data.draw(st.integers(0, len(shape) - 1)))
    sd = dict(SMALL_SD)
    sd[key] = torch.full(shape, 0.01)
    path = write_small("one_wrong_shape.safetensors", sd)
    with pytest.raises(DEADiffCheckpointError) as error:
        load_deadiff(path)
    message = str(error.value)
    assert message.startswith(path + ": ")
    if key not in SOURCES:
        assert key in message, f"{kind} of {key} {list(SMALL_SD[key].shape)} -> {shape}: {message}"


SMALL_FILES = {}


def small_file(kind: str) -> bytes:
    """The bytes of SMALL_SD written as the official .ckpt or as .safetensors (made once)."""
    if kind not in SMALL_FILES:
        target = os.path.join(tempfile.mkdtemp(prefix="deadiff-prop-"), f"small.{kind}")
        write = deadiff_fakes.write_official_ckpt if kind == "ckpt" else deadiff_fakes.write_official_safetensors
        with open(write(target, SMALL_SD), "rb") as f:
            SMALL_FILES[kind] = f.read()
    return SMALL_FILES[kind]


def load_bytes(name: str, data: bytes):
    folder = tempfile.mkdtemp(prefix="deadiff-fuzz-")
    path = os.path.join(folder, name)
    with open(path, "wb") as f:
        f.write(data)
    return path, load_deadiff(path)


@config("test_garbage_and_truncated_files_are_refused_clearly")
@given(
    head=st.sampled_from(
        [
            b"",
            b"PK\x03\x04",
            b"\x80\x02",
            b"\x80\x04\x95",
            b"\x08\x00\x00\x00\x00\x00\x00\x00{",
            b"version https://git-lfs",
        ]
    ),
    body=st.binary(max_size=600),
    suffix=st.sampled_from([".ckpt", ".safetensors", ".pt", ".sft"]),
    keep=st.floats(0.0, 0.999),
)
def test_garbage_and_truncated_files_are_refused_clearly(head, body, suffix, keep):
    """Random bytes behind the first bytes of every format, and any prefix of a good file: always a
    DEADiffCheckpointError naming the file (never another exception, never a hang)."""
    good = small_file("ckpt" if suffix in (".ckpt", ".pt") else "safetensors")
    for data in (head + body, good[: int(len(good) * keep)]):
        with pytest.raises(DEADiffCheckpointError) as error:
            load_bytes("garbage" + suffix, data)
        assert "garbage" + suffix in str(error.value)


@config("test_flipped_bytes_load_or_are_refused_clearly")
@given(kind=st.sampled_from(["ckpt", "safetensors"]), data=st.data())
def test_flipped_bytes_load_or_are_refused_clearly(kind, data):
    """A good file with a few bytes changed anywhere (header, pickle, zip directory, tensor data):
    it loads (the change hit tensor values), or a DEADiffCheckpointError says what is wrong."""
    raw = bytearray(small_file(kind))
    for _ in range(data.draw(st.integers(1, 3))):
        # half the flips in the first 4 KiB, where the headers and the pickle are
        position = data.draw(st.one_of(st.integers(0, min(4095, len(raw) - 1)), st.integers(0, len(raw) - 1)))
        raw[position] ^= data.draw(st.integers(1, 255))
    try:
        _, model = load_bytes(f"flipped.{kind}", bytes(raw))
    except DEADiffCheckpointError as error:
        assert f"flipped.{kind}: " in str(error)
        return
    assert model.config.num_query_tokens == SMALL["num_query_tokens"]


# ------------------------------------------------------------------ preprocessing

MEAN = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(CLIP_STD).view(1, 3, 1, 1)


@st.composite
def images(draw, channels=(1, 3, 4), low=-0.5, high=1.5):
    batch, height, width = draw(st.integers(1, 3)), draw(st.integers(1, 160)), draw(st.integers(1, 160))
    c = draw(st.sampled_from(channels))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    pixels = low + (high - low) * torch.rand(batch, height, width, c, generator=gen)
    if draw(st.booleans()):  # sometimes exactly 0/1 (hard edges, the worst case for bicubic overshoot)
        pixels = (pixels > 0.5).float()
    return pixels


@config("test_preprocess_properties")
@given(image=images(), size=st.sampled_from([14, 57, 224]))
def test_preprocess_properties(image, size):
    out = preprocess(image, size)
    assert out.shape == (image.shape[0], 3, size, size) and out.dtype == torch.float32
    pixels = out * STD + MEAN  # back in 0..1 units
    assert torch.isfinite(out).all() and pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    rgb = image.expand(-1, -1, -1, 3) if image.shape[-1] == 1 else image[..., :3]
    assert torch.equal(out, preprocess(rgb.contiguous(), size)), "gray = its 3-channel copy, RGBA = its RGB"
    assert torch.allclose(out[-1:], preprocess(image[-1], size), atol=1e-6), "each image on its own; (H, W, C) ok"
    value = float(image.flatten()[0].clamp(0, 1))
    flat = preprocess(torch.full((1, *image.shape[1:3], 3), value), size) * STD + MEAN
    assert torch.allclose(flat, torch.full_like(flat, value), atol=1e-5), "a solid image stays solid"


@config("test_preprocess_refuses_nan_and_inf_pixels")
@given(image=images(channels=(3, 4)), where=st.data(), bad=st.sampled_from([float("nan"), float("inf"), -float("inf")]))
def test_preprocess_refuses_nan_and_inf_pixels(image, where, bad):
    index = tuple(where.draw(st.integers(0, n - 1)) for n in image.shape)
    image[index] = bad
    if index[-1] == 3:  # the alpha channel is dropped: its values do not matter
        assert torch.isfinite(preprocess(image, 32)).all()
        return
    with pytest.raises(ValueError, match="NaN or infinite pixel values"):
        preprocess(image, 32)


@pytest.mark.parametrize(
    "shape,words",
    [
        ((1, 8, 8, 2), "1, 3 or 4 channels"),
        ((1, 8, 8, 5), "1, 3 or 4 channels"),
        ((8, 8), "1, 3 or 4 channels"),
        ((2, 1, 8, 8, 3), "1, 3 or 4 channels"),
        ((0, 8, 8, 3), "empty"),
        ((1, 0, 8, 3), "empty"),
        ((1, 8, 0, 1), "empty"),
    ],
)
def test_preprocess_refuses_impossible_shapes(shape, words):
    with pytest.raises(ValueError, match=words):
        preprocess(torch.rand(shape), 224)


# ------------------------------------------------------------------ mask resizing


@st.composite
def masks(draw, wild=True):
    batch, height, width = draw(st.integers(1, 3)), draw(st.integers(1, 120)), draw(st.integers(1, 120))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    kind = draw(st.sampled_from(["uniform", "binary", "wide", "sparse"] if wild else ["uniform", "binary", "sparse"]))
    mask = torch.rand(batch, height, width, generator=gen)
    if kind == "binary":
        mask = (mask > 0.5).float()
    elif kind == "wide":
        mask = mask * 40 - 20
        mask[torch.rand(mask.shape, generator=gen) < 0.1] = float("nan")
        mask[torch.rand(mask.shape, generator=gen) < 0.05] = float("inf")
        mask[torch.rand(mask.shape, generator=gen) < 0.05] = -float("inf")
    elif kind == "sparse":  # a few thin lines or dots on zeros: must not vanish on a coarse grid
        mask = torch.zeros(batch, height, width)
        mask[:, draw(st.integers(0, height - 1)), :] = 1.0
        mask[..., draw(st.integers(0, width - 1))] = 0.5
    return mask


grids = st.tuples(st.integers(1, 64), st.integers(1, 64))


@config("test_mask_resizing_properties")
@given(mask=masks(), grid=grids)
def test_mask_resizing_properties(mask, grid):
    h, w = grid
    out = resize_to_grid(as_mask_batch(mask), h, w)
    assert out.shape == (mask.shape[0], h * w) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    clean = torch.nan_to_num(mask, nan=0.0).clamp(0, 1)
    assert torch.equal(out, resize_to_grid(clean, h, w)), "NaN counts as 0, values are clamped to 0..1"
    complement = resize_to_grid(1 - clean, h, w)
    assert torch.allclose(out + complement, torch.ones_like(out), atol=1e-5), "complements split every grid"
    for i in range(mask.shape[0]):
        assert torch.equal(out[i : i + 1], resize_to_grid(mask[i : i + 1], h, w)), "each mask of a batch on its own"
    nonzero = clean.flatten(1).amax(dim=1) > 0
    assert torch.equal(out.amax(dim=1) > 0, nonzero), "a masked area never vanishes, an empty mask stays empty"
    if (mask.shape[1], mask.shape[2]) == (h, w):
        assert torch.allclose(out, clean.flatten(1), atol=1e-6), "same size: the mask itself"


@config("test_mask_shrinking_by_whole_factors_keeps_each_cells_share")
@given(mask=masks(wild=False), factor=st.tuples(st.integers(1, 6), st.integers(1, 6)), data=st.data())
def test_mask_shrinking_by_whole_factors_keeps_each_cells_share(mask, factor, data):
    """Shrinking H x W by whole factors: each grid cell is the mean of the pixels it covers."""
    fh, fw = factor
    h, w = max(1, mask.shape[1] // fh), max(1, mask.shape[2] // fw)
    assume(mask.shape[1] >= h * fh and mask.shape[2] >= w * fw)
    mask = mask[:, : h * fh, : w * fw]
    out = resize_to_grid(mask, h, w).view(-1, h, w)
    cells = mask.view(mask.shape[0], h, fh, w, fw).mean(dim=(2, 4))
    assert torch.allclose(out, cells, atol=1e-5)


@config("test_masks_of_impossible_shapes_are_refused")
@given(
    shape=st.one_of(
        st.lists(st.integers(1, 5), min_size=1, max_size=1),
        st.lists(st.integers(1, 5), min_size=4, max_size=5),
        st.tuples(st.integers(0, 2), st.integers(0, 5), st.integers(0, 5)).filter(lambda s: 0 in s).map(list),
    )
)
def test_masks_of_impossible_shapes_are_refused(shape):
    words = r"attn_mask must be a MASK of shape \(height, width\) or \(masks, height, width\)"
    with pytest.raises(ValueError, match=words):
        as_mask_batch(torch.zeros(shape))


@config("test_mask_batches_are_always_3d_float")
@given(mask=masks(), ndim=st.sampled_from([2, 3]))
def test_mask_batches_are_always_3d_float(mask, ndim):
    given_mask = mask[0] if ndim == 2 else mask
    out = as_mask_batch(given_mask.double())
    assert out.dtype == torch.float32 and out.ndim == 3 and out.shape[-2:] == mask.shape[-2:]
    assert out.shape[0] == (1 if ndim == 2 else mask.shape[0])
