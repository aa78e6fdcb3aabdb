"""Per-latent references, masks and negatives under context windows (issue 13), in the real ComfyUI.

SD1.5 predicts every latent of a batch on its own, so sampling a batch in overlapping windows and
fusing the windows' predictions must give what sampling it whole gives, provided each window's
latents get THEIR references. Two windowings: ComfyUI's own "Context Windows (Manual)" node
(comfy/context_windows.py; the window reaches the patches as transformer_options["context_window"])
and the test pack's AnimateDiff-style sliding context (transformer_options["ad_params"]["sub_idxs"]).

ComfyUI 0.3.75's context-window handler cannot window the batch dimension at all (it looks up the
step by comparing the whole per-latent timestep with the schedule and fails for more than one latent,
with or without DEADiff; later versions use the first value). There the test uses ComfyUI's own
handler and windows with only that lookup done the later way (DEADiffTest_BatchContextWindows).
"""

from __future__ import annotations

import sys

import pytest
import torch

import deadiff_fakes
import reference_deadiff as ref
from graphs import Graph
from test_site_patch import HEADS

LATENTS = 16
WINDOW = 8
SITE_KEY = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2."


@pytest.fixture(scope="module")
def official_sd():
    return deadiff_fakes.make_official_state_dict(seed=17)


@pytest.fixture(scope="module")
def deadiff_name(comfy, official_sd):
    path = comfy.base / "models" / "deadiff" / "tiny_windows.ckpt"
    if not path.exists():
        deadiff_fakes.write_official_ckpt(path, official_sd)
    return path.name


def context_windows_node(comfy, g, model, **chosen):
    """ComfyUI's own Context Windows (Manual) node, every input not chosen at its default."""
    cls = comfy.nodes.NODE_CLASS_MAPPINGS["ContextWindowsManual"]
    inputs = {}
    for name, spec in cls.INPUT_TYPES()["required"].items():
        if name != "model":
            inputs[name] = spec[1].get("default", spec[0][0] if isinstance(spec[0], list) else None)
    inputs.update(chosen)
    return g.node("ContextWindowsManual", model=model, **inputs)[0]


def graph(comfy, deadiff_name, windowing, *, roll=0, noise=True, masks=False, negative=False, key="w"):
    """16 latents, 16 references one per latent (rolled by `roll`), optionally 16 masks and 16 negative
    references one per latent; sampled whole or in windows of 8."""
    g = Graph()
    tiny = g.node("DEADiffTest_TinySD15", seed=0)
    pos = g.node("CLIPTextEncode", clip=tiny[1], text="a harbour at dawn")
    neg = g.node("CLIPTextEncode", clip=tiny[1], text="lowres")
    loader = g.node("DEADiffModelLoader", deadiff_name=deadiff_name)
    images = g.node("DEADiffTest_ImageFromSeed", seed=30, width=32, height=32, batch_size=LATENTS, channels=3)
    if roll:
        tail = g.node("ImageFromBatch", image=images, batch_index=roll, length=LATENTS - roll)
        head = g.node("ImageFromBatch", image=images, batch_index=0, length=roll)
        images = g.node("ImageBatch", image1=tail, image2=head)
    extra = {"style": g.node("DEADiffStyleEncoder", deadiff=loader, image=images, batch_mode="one per latent")}
    if masks:
        extra["attn_mask"] = g.node(
            "DEADiffTest_MaskFromSeed",
            seed=4,
            width=64,
            height=64,
            batch_size=LATENTS,
            low=0.0,
            high=1.0,
            nan_fraction=0.0,
        )
    if negative:
        others = g.node("DEADiffTest_ImageFromSeed", seed=31, width=32, height=32, batch_size=LATENTS, channels=3)
        extra["negative_style"] = g.node(
            "DEADiffStyleEncoder", deadiff=loader, image=others, batch_mode="one per latent"
        )
    model = g.node(
        "DEADiffApply",
        model=tiny[0],
        deadiff=loader,
        style_weight=1.0,
        content_weight=1.0,
        start_at=0.0,
        end_at=1.0,
        **extra,
    )[0]
    if windowing == "comfy" and comfy.module("DEADiffTest_SlidingContext").core_windows_handle_batches():
        model = context_windows_node(
            comfy,
            g,
            model,
            context_length=WINDOW,
            context_overlap=4,
            context_schedule="standard_static",
            fuse_method="pyramid",
            dim=0,
        )
    elif windowing == "comfy":  # ComfyUI 0.3.75: its own handler, with the step lookup of later versions
        model = g.node("DEADiffTest_BatchContextWindows", model=model, context_length=WINDOW, context_overlap=4)[0]
    elif windowing == "animatediff":
        model = g.node("DEADiffTest_SlidingContext", model=model, context_length=WINDOW, overlap=3)[0]
    sampler = g.node("KSamplerSelect", sampler_name="euler")
    sigmas = g.node("BasicScheduler", model=tiny[0], scheduler="normal", steps=3, denoise=1.0)
    latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=LATENTS)
    sample = g.node(
        "SamplerCustom",
        model=model,
        add_noise=noise,
        noise_seed=3,
        cfg=6.0,
        positive=pos,
        negative=neg,
        sampler=sampler,
        sigmas=sigmas,
        latent_image=latent,
    )
    g.node("DEADiffTest_CaptureLatent", samples=sample, key=key)
    return g.prompt, sample


_RUNS: dict = {}


def samples(comfy, deadiff_name, windowing, **options):
    """The sampled 16 latents (runs of the same graph are made once per module: they are deterministic)."""
    key = (windowing, tuple(sorted(options.items())))
    if key not in _RUNS:
        prompt, sample = graph(comfy, deadiff_name, windowing, **options)
        out = comfy.run(prompt)[sample.id][0]["samples"]
        assert out.shape[0] == LATENTS and torch.isfinite(out).all()
        _RUNS[key] = out
    return _RUNS[key]


def assert_close(a, b, what):
    error = float((a - b).abs().max() / b.abs().max())
    assert error <= 1e-5, f"{what}: max error {error:.2e} of the scale"


@pytest.mark.parametrize("windowing", ["comfy", "animatediff"])
def test_windows_follow_one_reference_per_latent(comfy, deadiff_name, windowing):
    whole = samples(comfy, deadiff_name, None)
    windowed = samples(comfy, deadiff_name, windowing)
    assert_close(windowed, whole, "windowed vs whole batch")


def test_latent_i_follows_reference_i_in_comfy_windows(comfy, deadiff_name):
    """All 16 latents start alike (no noise), so each result is a function of its reference alone:
    rolling the references by 5 rolls the windowed results by 5."""
    plain = samples(comfy, deadiff_name, "comfy", noise=False)
    rolled = samples(comfy, deadiff_name, "comfy", noise=False, roll=5)
    assert_close(rolled, torch.roll(plain, shifts=-5, dims=0), "rolled references")
    assert (plain[0] - plain[1]).abs().max() > 1e-3, "different references must give different latents"


@pytest.mark.parametrize("windowing", ["comfy", "animatediff"])
def test_windows_follow_per_latent_masks_and_negatives(comfy, deadiff_name, windowing):
    whole = samples(comfy, deadiff_name, None, masks=True, negative=True)
    windowed = samples(comfy, deadiff_name, windowing, masks=True, negative=True)
    assert_close(windowed, whole, "windowed vs whole batch, with masks and negatives")
    assert (whole - samples(comfy, deadiff_name, None)).abs().max() > 1e-3, "masks and negatives act"


# ---------------------------------------------------------------- one site, the window as ComfyUI hands it


class Window:
    """What a context window looks like to an attention patch: index_list and dim (0.3.75), plus
    total_frames and, for windows after the first, causal_anchor_index (newer ComfyUI)."""

    def __init__(self, index_list, total_frames=None, anchor=None, dim=0):
        self.index_list, self.dim = list(index_list), dim
        if total_frames is not None:
            self.total_frames = total_frames
        if anchor is not None:
            self.causal_anchor_index = anchor


def call_node(comfy, node_id, **inputs):
    cls = comfy.nodes.NODE_CLASS_MAPPINGS[node_id]
    return getattr(cls(), cls.FUNCTION)(**inputs)


def call_site(patch, q, k, v, order, shape, **extra):
    return patch(
        q,
        k,
        v,
        {
            "n_heads": HEADS,
            "cond_or_uncond": list(order),
            "attn_precision": None,
            "sigmas": torch.ones(q.shape[0]),
            "activations_shape": shape,
            **extra,
        },
    )


@pytest.fixture(scope="module")
def per_latent_patch(comfy, deadiff_name, official_sd):
    (deadiff,) = call_node(comfy, "DEADiffModelLoader", deadiff_name=deadiff_name)
    (images,) = call_node(
        comfy, "DEADiffTest_ImageFromSeed", seed=30, width=32, height=32, batch_size=LATENTS, channels=3
    )
    style, _preview = call_node(
        comfy, "DEADiffStyleEncoder", deadiff=deadiff, image=images, batch_mode="one per latent"
    )
    negative, _preview = call_node(
        comfy, "DEADiffStyleEncoder", deadiff=deadiff, image=images.flip(0), batch_mode="one per latent"
    )
    masks = torch.rand(LATENTS, 3, 4, generator=torch.Generator().manual_seed(2))
    (tiny, _, _) = call_node(comfy, "DEADiffTest_TinySD15", seed=0)
    (model,) = call_node(
        comfy,
        "DEADiffApply",
        model=tiny,
        deadiff=deadiff,
        style_weight=0.9,
        content_weight=1.0,
        start_at=0.0,
        end_at=1.0,
        style=style,
        attn_mask=masks,
        negative_style=negative,
    )
    patch = model.model_options["transformer_options"]["patches_replace"]["attn2"][("input", 1, 0)]
    return {
        "patch": patch,
        "style": style.tokens,
        "negative": negative.tokens,
        "masks": masks,
        "i_to_k": official_sd[SITE_KEY + "i_to_k.weight"].float(),
        "i_to_v": official_sd[SITE_KEY + "i_to_v.weight"].float(),
    }


def expected_site(s, q, k, v, indices, order):
    """Each latent of the window with the reference, negative and mask of its index in the whole batch."""
    rows = []
    chunk = len(indices)
    for c_i, c in enumerate(order):
        for j, index in enumerate(indices):
            b = c_i * chunk + j
            tokens = (s["negative"] if c == 1 else s["style"])[index : index + 1]
            e = 0.9 * tokens
            keys = torch.cat([k[b : b + 1], e @ s["i_to_k"].T], 1)
            values = torch.cat([v[b : b + 1], e @ s["i_to_v"].T], 1)
            bias = torch.zeros(1, q.shape[1], keys.shape[1])
            bias[0, :, k.shape[1] :] = torch.log(s["masks"][index].flatten())[:, None]
            rows.append(ref.attention_with_bias(q[b : b + 1], keys, values, HEADS, bias))
    return torch.cat(rows)


@pytest.mark.parametrize(
    "window,indices",
    [
        ({"context_window": Window(range(4, 12))}, list(range(4, 12))),  # ComfyUI 0.3.75
        ({"context_window": Window(range(8, 16), total_frames=16, anchor=7)}, [7, *range(8, 16)]),  # newer ComfyUI
        (
            {"ad_params": {"full_length": 16, "context_length": 8, "sub_idxs": [14, 15, 0, 1, 2, 3, 4, 5]}},
            [14, 15, 0, 1, 2, 3, 4, 5],
        ),  # AnimateDiff, looped
    ],
)
def test_site_follows_the_window_indices(per_latent_patch, window, indices):
    gen = torch.Generator().manual_seed(len(indices))
    order = (1, 0)
    q = torch.randn(len(order) * len(indices), 12, 32, generator=gen)
    k = torch.randn(q.shape[0], 77, 32, generator=gen)
    v = torch.randn(q.shape[0], 77, 32, generator=gen)
    out = call_site(per_latent_patch["patch"], q, k, v, order, [q.shape[0], 32, 3, 4], **window)
    torch.testing.assert_close(out, expected_site(per_latent_patch, q, k, v, indices, order), rtol=1e-5, atol=1e-5)


def test_without_a_window_nothing_changes_and_wrong_sizes_are_named(per_latent_patch):
    s = per_latent_patch
    q = torch.randn(2 * LATENTS, 12, 32)
    k, v = torch.randn(2 * LATENTS, 77, 32), torch.randn(2 * LATENTS, 77, 32)
    whole = call_site(s["patch"], q, k, v, (0, 1), [q.shape[0], 32, 3, 4])
    not_sliding = call_site(
        s["patch"],
        q,
        k,
        v,
        (0, 1),
        [q.shape[0], 32, 3, 4],
        ad_params={"full_length": 16, "context_length": 16, "sub_idxs": None},
    )
    assert torch.equal(whole, not_sliding)
    torch.testing.assert_close(whole, expected_site(s, q, k, v, list(range(LATENTS)), (0, 1)), rtol=1e-5, atol=1e-5)
    q8 = q[:16]
    with pytest.raises(
        ValueError,
        match=r"tokens: 16 given.*latent batch has 20 images \(sampled in context "
        r"windows of 8\)",
    ):
        call_site(
            s["patch"],
            q8,
            k[:16],
            v[:16],
            (0, 1),
            [16, 32, 3, 4],
            context_window=Window(range(12, 20), total_frames=20),
        )
    with pytest.raises(ValueError, match=r"tokens: 16 given.*at least 20 images"):
        call_site(s["patch"], q8, k[:16], v[:16], (0, 1), [16, 32, 3, 4], context_window=Window(range(12, 20)))


@pytest.mark.parametrize("schedule", ["standard_static", "standard_uniform", "looped_uniform", "batched"])
def test_window_indices_are_the_latents_comfys_handler_slices(comfy, schedule):
    """ComfyUI's own context-window handler (this ComfyUI's comfy/context_windows.py, with its defaults:
    newer versions put the frame before a window in front of it) runs a stand-in of the cond batch on a
    16-latent batch whose latent i holds the value i: for every window of every step, the indices DEADiff
    reads from the window the handler hands the patches are the latents it sliced."""
    import comfy.context_windows as cw

    latent_window = sys.modules[comfy.pack.__name__.rsplit(".", 1)[0] + ".latent_window"].latent_window
    handler = cw.IndexListContextHandler(
        cw.get_matching_context_schedule(schedule),
        cw.get_matching_fuse_method("pyramid"),
        context_length=WINDOW,
        context_overlap=4,
        dim=0,
    )
    model = call_node(comfy, "DEADiffTest_TinySD15", seed=0)[0].model
    x = torch.arange(float(LATENTS)).view(LATENTS, 1, 1, 1).expand(LATENTS, 4, 2, 2).contiguous()
    sigmas = torch.tensor([10.0, 5.0, 1.0, 0.0])
    seen = []

    def cond_batch(model, conds, sub_x, sub_timestep, model_options):
        window = latent_window(model_options["transformer_options"], sub_x.shape[0])
        seen.append((window, [int(v) for v in sub_x[:, 0, 0, 0]]))
        return [torch.zeros_like(sub_x) for _ in conds]

    for step in range(3):
        options = {"transformer_options": {"sample_sigmas": sigmas}}
        # one timestep for the batch: ComfyUI 0.3.75's handler cannot look up the step from one per latent
        handler.execute(cond_batch, model, [[{"model_conds": {}}]], x, sigmas[step : step + 1], options)
    assert len(seen) >= 6 and any(sliced[0] != 0 for _, sliced in seen)
    for window, sliced in seen:
        assert window is not None and list(window.indices) == sliced
        assert window.full_length in (None, LATENTS)
