"""Bad or unusual inputs, each handled or refused clearly, in graphs run by the real ComfyUI executor.

Reference images of any size (1x1 to 4096x4096), gray, RGBA, batches larger or smaller than the
latent batch; masks of any size, batch and value range; weights at 0, negative, at the maximum and
beyond; start_at > end_at; cfg 1; one step; very long prompts. "Handled" is always checked against
something that could fail: an equality with another graph (a weight-0 style equals no style, an
all-0 mask equals no DEADiff at all, a gray image equals its 3-channel copy, ...), not only that the
graph ran. The rows of docs/reliability.md name these tests.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys

import pytest
import torch

import deadiff_fakes
from conftest import REPO, GraphError
from graphs import Graph

POSITIVE = "a red barn in a field"
NEGATIVE = "lowres"
LONG_PROMPT = ", ".join(["a tall stone lighthouse on a rocky coast at dusk with waves"] * 25)  # ~300 tokens


@pytest.fixture(scope="module")
def deadiff_name(comfy):
    return deadiff_fakes.place(comfy.base / "models" / "deadiff", "tiny_reliability.safetensors", seed=8)


def seed_image(seed=9, width=64, height=64, batch_size=1, channels=3):
    return lambda g: g.node(
        "DEADiffTest_ImageFromSeed", seed=seed, width=width, height=height, batch_size=batch_size, channels=channels
    )


# the default image is a node-making function, made once and never modified (hence the noqa)
def build(
    deadiff_name,
    *,
    image=seed_image(),  # noqa: B008
    apply=True,
    style=True,
    content=False,
    mask=None,
    latent_batch=1,
    steps=2,
    cfg=4.0,
    style_weight=1.0,
    content_weight=1.0,
    start_at=0.0,
    end_at=1.0,
    positive=POSITIVE,
    negative=NEGATIVE,
):
    """tiny SD1.5 -> [DEADiff Apply] -> KSampler (euler, 64x64); returns (prompt, nodes by role)."""
    g = Graph()
    tiny = g.node("DEADiffTest_TinySD15", seed=0)
    pos = g.node("CLIPTextEncode", clip=tiny[1], text=positive)
    neg = g.node("CLIPTextEncode", clip=tiny[1], text=negative)
    nodes, model = {"positive": pos, "negative": neg}, tiny[0]
    if apply:
        nodes["loader"] = loader = g.node("DEADiffModelLoader", deadiff_name=deadiff_name)
        nodes["image"] = img = image(g)
        extra = {}
        if style:
            nodes["style"] = extra["style"] = g.node("DEADiffStyleEncoder", deadiff=loader, image=img)
        if content:
            nodes["content"] = extra["content"] = g.node("DEADiffContentEncoder", deadiff=loader, image=img)
        if mask is not None:
            nodes["mask"] = extra["attn_mask"] = mask(g)
        model = g.node(
            "DEADiffApply",
            model=model,
            deadiff=loader,
            style_weight=style_weight,
            content_weight=content_weight,
            start_at=start_at,
            end_at=end_at,
            **extra,
        )
    latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=latent_batch)
    nodes["sample"] = g.node(
        "KSampler",
        model=model,
        seed=5,
        steps=steps,
        cfg=cfg,
        sampler_name="euler",
        scheduler="normal",
        positive=pos,
        negative=neg,
        latent_image=latent,
        denoise=1.0,
    )
    g.node("DEADiffTest_CaptureLatent", samples=nodes["sample"], key="reliability")
    return g.prompt, nodes


def run(comfy, deadiff_name, **options):
    """(sampled latent, every node's outputs, nodes) of `build(...)`."""
    prompt, nodes = build(deadiff_name, **options)
    out = comfy.run(prompt)
    latent = out[nodes["sample"].id][0]["samples"]
    assert torch.isfinite(latent).all(), f"non-finite latent for {options}"
    return latent, out, nodes


def latent(comfy, deadiff_name, **options):
    return run(comfy, deadiff_name, **options)[0]


def assert_same(a, b, why):
    """Equal up to float rounding. A random UNet does not denoise, so latents stay about sigma_max-sized
    (hundreds): tolerances are relative to the largest value."""
    scale = float(b.abs().max())
    assert (a - b).abs().max() <= 1e-5 * scale, f"{why}: max difference {float((a - b).abs().max())} (scale {scale})"


def assert_differs(a, b, why):
    """Different by far more than float rounding (1000x the tolerance of `assert_same`)."""
    scale = float(b.abs().max())
    assert (a - b).abs().max() > 1e-2 * scale, f"{why}: max difference {float((a - b).abs().max())} (scale {scale})"


@pytest.fixture(scope="module", autouse=True)
def _fast_gc():
    """ComfyUI calls gc.collect() whenever it finds a model it loaded still referenced after its
    patcher is gone, which the tiny models' shared cache makes happen at every graph. Freezing the
    test process's long-lived objects (torch, transformers, ComfyUI) makes each of those collections
    take milliseconds instead of ~0.3 s; they are unfrozen after this module."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="module")
def baselines(comfy, deadiff_name):
    """The latents other graphs are compared with: no DEADiff, and the default style transfer."""
    return {
        (kind, batch): latent(comfy, deadiff_name, apply=(kind == "style"), latent_batch=batch)
        for kind in ("plain", "style")
        for batch in (1, 2)
    }


# ------------------------------------------------------------------ reference images


def test_style_actually_changes_the_result(baselines):
    """Makes the equalities below meaningful: DEADiff moves the latent well beyond their tolerance."""
    assert_differs(baselines[("style", 1)], baselines[("plain", 1)], "the style reference had no effect")


def solid_image(width, height, color=0x3366CC):
    return lambda g: g.node("EmptyImage", width=width, height=height, batch_size=1, color=color)


@pytest.fixture(scope="module")
def one_pixel(comfy, deadiff_name):
    result, out, nodes = run(comfy, deadiff_name, image=solid_image(1, 1))
    assert out[nodes["image"].id][0].shape == (1, 1, 1, 3)
    tokens = out[nodes["style"].id][0].tokens
    assert tokens.shape == (1, 16, 64) and torch.isfinite(tokens).all()
    return result


def test_one_pixel_reference_image(one_pixel, baselines):
    assert_differs(one_pixel, baselines[("plain", 1)], "a 1x1 reference still conditions the picture")


@pytest.mark.parametrize("width,height", [(300, 200), (4096, 4096)])
def test_solid_reference_gives_the_same_result_at_any_size(comfy, deadiff_name, one_pixel, width, height):
    """Every reference is squashed to 224x224: a solid colour is the same reference at 1x1 and 4096x4096."""
    assert_same(
        latent(comfy, deadiff_name, image=solid_image(width, height)),
        one_pixel,
        f"a solid {width}x{height} reference must equal the solid 1x1 one",
    )


def test_4096_reference_image(comfy, deadiff_name, baselines):
    result, out, nodes = run(comfy, deadiff_name, image=seed_image(seed=3, width=4096, height=4096))
    assert out[nodes["image"].id][0].shape == (1, 4096, 4096, 3)
    tokens = out[nodes["style"].id][0].tokens
    assert tokens.shape == (1, 16, 64) and torch.isfinite(tokens).all()
    assert_differs(result, baselines[("plain", 1)], "a 4096x4096 reference conditions the picture")


PREPROCESS_MEMORY = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[1])
from deadiff_core.preprocess import preprocess
def kib(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field))
preprocess(torch.rand(1, 64, 64, 3), 224)                  # warm up the kernels
report = {}
for channels in (1, 3, 4):
    image = torch.rand(1, 4096, 4096, channels)
    open("/proc/self/clear_refs", "w").write("5")          # reset the peak (VmHWM) to the current RSS
    before = kib("VmRSS:")
    out = preprocess(image, 224)
    report[channels] = {"extra": (kib("VmHWM:") - before) * 1024, "shape": list(out.shape)}
    del image, out
print(json.dumps(report))
"""

# A 4096x4096 reference may take at most one float32 RGB copy of itself (192 MiB) beyond the input,
# plus 16 MiB: the squash is one antialiased resize, never a chain of full-size intermediates.
PREPROCESS_EXTRA_BOUND = 4096 * 4096 * 3 * 4 + 16 * 2**20


def test_4096_preprocessing_memory_is_bounded():
    """Measured in a fresh process: its peak resident memory while preprocessing a 4096x4096 gray, RGB
    and RGBA image, minus its resident memory just before (the image already made)."""
    done = subprocess.run(
        [sys.executable, "-c", PREPROCESS_MEMORY, str(REPO)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    for channels, measured in report.items():
        assert measured["shape"] == [1, 3, 224, 224]
        assert measured["extra"] <= PREPROCESS_EXTRA_BOUND, (
            f"preprocessing a 4096x4096x{channels} image took {measured['extra'] / 2**20:.0f} MiB beyond the "
            f"input (bound {PREPROCESS_EXTRA_BOUND / 2**20:.0f} MiB)"
        )


@pytest.mark.parametrize(
    "channels,to_rgb",
    [
        (1, lambda im: im.expand(-1, -1, -1, 3)),  # gray: the one channel as R, G and B
        (4, lambda im: im[..., :3]),  # RGBA: alpha ignored
    ],
    ids=["gray", "RGBA"],
)
def test_gray_and_rgba_references_equal_their_rgb_copy(comfy, deadiff_name, channels, to_rgb):
    result, out, nodes = run(comfy, deadiff_name, image=seed_image(seed=4, channels=channels))
    image = out[nodes["image"].id][0]
    assert image.shape[-1] == channels
    deadiff = out[nodes["loader"].id][0]
    expected = deadiff.model.encoder.encode(to_rgb(image).contiguous(), "style")
    torch.testing.assert_close(out[nodes["style"].id][0].tokens, expected, rtol=0, atol=0)


def two_references(first, second):
    def make(g):
        return g.node("ImageBatch", image1=seed_image(seed=first)(g), image2=seed_image(seed=second)(g))

    return make


def test_reference_batch_acts_at_once_and_order_does_not_matter(comfy, deadiff_name, baselines):
    """All references' tokens sit side by side in one softmax: swapping them changes nothing, adding
    one changes the result."""
    ab = latent(comfy, deadiff_name, image=two_references(9, 21))
    ba = latent(comfy, deadiff_name, image=two_references(21, 9))
    assert_same(ab, ba, "the order of the reference batch must not matter")
    assert_differs(ab, baselines[("style", 1)], "a second reference must change the result")


@pytest.mark.parametrize("references,latents", [(3, 1), (1, 3), (8, 2), (8, 1)])
def test_reference_batch_of_any_size_with_any_latent_batch(comfy, deadiff_name, references, latents):
    result, out, nodes = run(
        comfy, deadiff_name, image=seed_image(seed=2, batch_size=references), content=True, latent_batch=latents
    )
    assert out[nodes["style"].id][0].tokens.shape == (references, 16, 64)
    assert out[nodes["content"].id][0].tokens.shape == (references, 16, 64)
    assert result.shape == (latents, 4, 8, 8)


def test_same_reference_repeated_in_a_batch_is_not_the_single_reference(comfy, deadiff_name, baselines):
    """[A, A] gives A twice the softmax share of [A] (documented: a batch is attended to at once)."""
    doubled = latent(comfy, deadiff_name, image=two_references(9, 9))
    assert_differs(doubled, baselines[("style", 1)], "two copies of a reference weigh more than one")


# ------------------------------------------------------------------ masks


def solid_mask(value, width, height):
    return lambda g: g.node("SolidMask", value=value, width=width, height=height)


@pytest.mark.parametrize("width,height", [(1, 1), (7, 13), (512, 384)])
def test_full_mask_of_any_size_equals_no_mask(comfy, deadiff_name, baselines, width, height):
    assert_same(
        latent(comfy, deadiff_name, mask=solid_mask(1.0, width, height)),
        baselines[("style", 1)],
        f"a {width}x{height} mask of ones must act like no mask",
    )


@pytest.mark.parametrize("width,height", [(1, 1), (40, 24)])
def test_empty_mask_equals_no_deadiff(comfy, deadiff_name, baselines, width, height):
    assert_same(
        latent(comfy, deadiff_name, mask=solid_mask(0.0, width, height)),
        baselines[("plain", 1)],
        "where the mask is 0 the picture follows the prompt alone",
    )


def test_one_mask_per_latent_image(comfy, deadiff_name, baselines):
    """A batch of two masks [ones, zeros] with two latents: the first gets the style, the second not."""

    def masks(g):
        ones = g.node("MaskToImage", mask=solid_mask(1.0, 16, 16)(g))
        zeros = g.node("MaskToImage", mask=solid_mask(0.0, 16, 16)(g))
        return g.node("ImageToMask", image=g.node("ImageBatch", image1=ones, image2=zeros), channel="red")

    result = latent(comfy, deadiff_name, mask=masks, latent_batch=2)
    assert_same(result[0], baselines[("style", 2)][0], "mask 1 of 2 is all ones: styled")
    assert_same(result[1], baselines[("plain", 2)][1], "mask 2 of 2 is all zeros: plain")


def test_one_mask_for_a_latent_batch(comfy, deadiff_name, baselines):
    assert_same(
        latent(comfy, deadiff_name, mask=solid_mask(1.0, 9, 9), latent_batch=2),
        baselines[("style", 2)],
        "one mask of ones applies to every latent",
    )


def seed_mask(seed=1, width=32, height=32, batch_size=1, low=0.0, high=1.0, nan_fraction=0.0, sanitised=False):
    return lambda g: g.node(
        "DEADiffTest_MaskFromSeed",
        seed=seed,
        width=width,
        height=height,
        batch_size=batch_size,
        low=low,
        high=high,
        nan_fraction=nan_fraction,
        sanitised=sanitised,
    )


@pytest.mark.parametrize("mask_batch,latents", [(3, 2), (2, 1), (2, 3)])
def test_mask_batch_that_fits_no_latent_batch_is_refused(comfy, deadiff_name, mask_batch, latents):
    with pytest.raises(GraphError) as failure:
        run(comfy, deadiff_name, mask=seed_mask(batch_size=mask_batch), latent_batch=latents)
    message = str(failure.value)
    for words in ("attn_mask", f"{mask_batch} given", f"latent batch has {latents} images", "one per image"):
        assert words in message, f"{words!r} missing from: {message}"


def wild_mask(sanitised=False):
    return seed_mask(seed=3, width=48, height=40, low=-3.0, high=4.0, nan_fraction=0.2, sanitised=sanitised)


def test_mask_values_outside_0_1_and_nan_are_clamped(comfy, deadiff_name, baselines):
    """Values in -3..4 with 20% NaN act exactly like the same mask clamped to 0..1 with NaN as 0."""
    result, out, nodes = run(comfy, deadiff_name, mask=wild_mask())
    raw = out[nodes["mask"].id][0]
    assert raw.isnan().any() and raw.nan_to_num(0.0).min() < 0 and raw.nan_to_num(0.0).max() > 1
    clean, out, nodes = run(comfy, deadiff_name, mask=wild_mask(sanitised=True))
    assert torch.equal(out[nodes["mask"].id][0], raw.nan_to_num(nan=0.0).clamp(0.0, 1.0))
    assert_same(result, clean, "the pack must read the wild mask as its sanitised copy")
    assert_differs(result, baselines[("plain", 1)], "the mask lets the reference act somewhere")
    assert_differs(result, baselines[("style", 1)], "the mask keeps the reference out somewhere")


def test_all_nan_mask_equals_no_deadiff(comfy, deadiff_name, baselines):
    assert_same(
        latent(comfy, deadiff_name, mask=seed_mask(width=8, height=8, nan_fraction=1.0)),
        baselines[("plain", 1)],
        "NaN counts as 0",
    )


def test_mask_above_one_equals_full_mask(comfy, deadiff_name, baselines):
    assert_same(
        latent(comfy, deadiff_name, mask=seed_mask(width=20, height=20, low=1.0, high=50.0)),
        baselines[("style", 1)],
        "values above 1 count as 1",
    )


# ------------------------------------------------------------------ weights, window, sampling settings


def test_weight_zero_equals_an_unconnected_branch(comfy, deadiff_name, baselines):
    """Weight 0 scales the tokens' keys and values to 0: exactly the 16 zero tokens of an unused branch."""
    zero = latent(comfy, deadiff_name, style_weight=0.0)
    assert_same(zero, latent(comfy, deadiff_name, style=False), "style_weight 0 == style unconnected")
    assert_differs(zero, baselines[("plain", 1)], "zero tokens still take softmax mass (official behaviour)")


@pytest.mark.parametrize("weight", [-2.0, 5.0])
def test_negative_and_maximum_weights_run(comfy, deadiff_name, baselines, weight):
    result = latent(comfy, deadiff_name, style_weight=weight, content=True, content_weight=weight)
    assert_differs(result, baselines[("style", 1)], f"weight {weight} must change the result")


@pytest.mark.parametrize(
    "field,value,words",
    [
        ("style_weight", 5.5, "bigger than max of 5.0"),
        ("content_weight", -2.5, "smaller than min of -2.0"),
        ("start_at", 1.5, "bigger than max of 1.0"),
        ("end_at", -0.1, "smaller than min of 0.0"),
    ],
)
def test_out_of_range_values_are_refused_before_running(comfy, deadiff_name, field, value, words):
    prompt, _ = build(deadiff_name, **{field: value})
    with pytest.raises(GraphError) as failure:
        comfy.run(prompt)
    assert words in str(failure.value) and field in str(failure.value)


def test_start_after_end_is_refused(comfy, deadiff_name):
    with pytest.raises(GraphError) as failure:
        run(comfy, deadiff_name, start_at=0.8, end_at=0.2)
    assert "start_at (0.8) is after end_at (0.2)" in str(failure.value)
    assert "Set start_at <= end_at" in str(failure.value)


def test_empty_window_at_the_end_acts_like_no_deadiff(comfy, deadiff_name, baselines):
    """start_at = end_at = 1: the window is the last sigma (0), never sampled: the plain model."""
    assert_same(
        latent(comfy, deadiff_name, start_at=1.0, end_at=1.0),
        baselines[("plain", 1)],
        "a window at the very end leaves every step plain",
    )


def test_cfg_one_and_one_step(comfy, deadiff_name):
    for options in ({"cfg": 1.0}, {"steps": 1}, {"cfg": 1.0, "steps": 1}):
        styled = latent(comfy, deadiff_name, **options)
        plain = latent(comfy, deadiff_name, apply=False, **options)
        assert_differs(styled, plain, f"DEADiff acts with {options}")


@pytest.mark.parametrize(
    "positive,negative",
    [(LONG_PROMPT, NEGATIVE), (LONG_PROMPT, LONG_PROMPT), (POSITIVE, LONG_PROMPT)],
    ids=["long positive", "both long", "long negative"],
)
def test_very_long_prompts(comfy, deadiff_name, positive, negative):
    """Prompts past 77 tokens (several CLIP chunks; cond and uncond of different lengths) still sample."""
    styled, out, nodes = run(comfy, deadiff_name, positive=positive, negative=negative)
    lengths = [out[nodes[role].id][0][0][0].shape[1] for role in ("positive", "negative")]
    for length, text in zip(lengths, (positive, negative)):
        assert length % 77 == 0 and (length > 77) == (text == LONG_PROMPT), (length, text[:20])
    plain = latent(comfy, deadiff_name, apply=False, positive=positive, negative=negative)
    assert_differs(styled, plain, "DEADiff acts next to a long prompt")


# ------------------------------------------------------------------ docs/reliability.md states what the tests assert


def _items(function) -> int:
    """How many test items pytest makes of `function` (the product of its parametrize lists)."""
    count = 1
    for mark in getattr(function, "pytestmark", []):
        if mark.name == "parametrize":
            count *= len(mark.args[1])
    return count


def test_docs_reliability_md_matches_the_tests():
    import test_properties
    import test_reliability_files
    import test_soak
    from bad_files import BAD_AT_ENCODE, BAD_FILES, GOOD_ODD_FILES

    doc = (REPO / "docs" / "reliability.md").read_text()
    rows = [line for line in doc.splitlines() if line.startswith("|")]

    def row(*needles):
        assert any(all(n in r for n in needles) for r in rows), f"docs/reliability.md has no table row with {needles}"

    for case, (_, words) in BAD_FILES.items():
        row(f"| {case} |", f"`{words}`")
    for case, (_, _, words) in BAD_AT_ENCODE.items():
        row(f"| {case} |", f"`{words}`")
    for case in GOOD_ODD_FILES:
        row(f"| {case} |")
    assert (
        f"{len(BAD_FILES)} bad files, {len(BAD_AT_ENCODE)} files bad at encode time, "
        f"{len(GOOD_ODD_FILES)} odd but valid files"
    ) in doc
    this = sys.modules[__name__]
    for module in (this, test_reliability_files, test_soak, test_properties):
        for name, function in vars(module).items():
            if name.startswith("test_") and callable(function) and name != "test_docs_reliability_md_matches_the_tests":
                assert name in doc, f"docs/reliability.md does not name {module.__name__}::{name}"
    inputs = sum(_items(f) for n, f in vars(this).items() if n.startswith("test_") and callable(f))
    assert f"| bad or unusual inputs | {inputs} tests |" in doc
    for name, examples in test_properties.EXAMPLES.items():
        row(f"`{name}`", f"| {examples} |")
        applied = getattr(getattr(test_properties, name), "_hypothesis_internal_use_settings", None)
        assert applied is not None and applied.max_examples == examples, name
    shapes = _items(test_properties.test_preprocess_refuses_impossible_shapes)
    assert (
        f"{len(test_properties.EXAMPLES)} hypothesis tests, {sum(test_properties.EXAMPLES.values())} examples, "
        f"plus {shapes} shape cases"
    ) in doc
    assert f"{test_soak.SOAK_PROMPTS} prompts" in doc and f"**{test_soak.RSS_GROWTH_BOUND // 2**20} MiB**" in doc
    assert f"prompts 26-{test_soak.SOAK_PROMPTS}" in doc and f"after prompt {test_soak.VARIANTS}" in doc
    assert f"bound {PREPROCESS_EXTRA_BOUND // 2**20} MiB" in doc
