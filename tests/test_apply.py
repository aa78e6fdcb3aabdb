"""Apply Disentangled Conditioning inside a real ComfyUI, checked against a plain reference of docs/design.md §5-§6.

The reference is written from the spec alone: a copy of the same UNet whose 16 cross-attention
modules are replaced by a textbook attention over [text keys; w * E @ i_to_k^T] (and values), with
the i_to_k / i_to_v read straight from the official checkpoint keys, style tokens at the 11 fine
sites, content tokens at the 5 coarse ones, and zero tokens wherever a branch is not used and in the
negative pass. ComfyUI's own sampler path (SamplerCustom, CFG, batching of cond and uncond) must
produce the same denoised predictions.
"""

from __future__ import annotations

import copy

import pytest
import torch

import deadiff_fakes
import reference_deadiff as ref
from graphs import Graph

STEPS = 3
CONTENT_BLOCKS = {"input_blocks.7", "input_blocks.8", "middle_block", "output_blocks.3", "output_blocks.4"}
SITE_BLOCKS = [
    "input_blocks.1",
    "input_blocks.2",
    "input_blocks.4",
    "input_blocks.5",
    "input_blocks.7",
    "input_blocks.8",
    "middle_block",
    *[f"output_blocks.{i}" for i in range(3, 12)],
]


# ---------------------------------------------------------------- the plain reference of docs/design.md §6


class ReferenceCrossAttention(torch.nn.Module):
    """docs/design.md §6 for one site: K = [to_k(T); w*i_to_k(E)], V = [to_v(T); w*i_to_v(E)], one softmax."""

    def __init__(self, original, i_to_k, i_to_v, state):
        super().__init__()
        self.original, self.i_to_k, self.i_to_v, self.state = original, i_to_k, i_to_v, state

    def forward(self, x, context=None, value=None, mask=None, transformer_options={}):  # noqa: B006  (ComfyUI's signature; never mutated)
        a = self.original
        q, k, v = a.to_q(x), a.to_k(context), a.to_v(context if value is None else value)
        out = ref.site_attention(q, k, v, self.state["tokens"](self), self.i_to_k, self.i_to_v, a.heads)
        return a.to_out(out)


class ReferenceUNet:
    """The same UNet weights, every site rebuilt from the raw checkpoint keys."""

    @torch.inference_mode()
    def __init__(self, model_patcher, official_sd):
        self.base = model_patcher.model
        self.unet = copy.deepcopy(self.base.diffusion_model)
        self.state = {"tokens": lambda site: []}
        for block in SITE_BLOCKS:
            path = f"{block}.1.transformer_blocks.0"
            parent = self.unet.get_submodule(path)
            ckpt = f"model.diffusion_model.{path}.attn2."
            ref = ReferenceCrossAttention(
                parent.attn2,
                official_sd[ckpt + "i_to_k.weight"].float(),
                official_sd[ckpt + "i_to_v.weight"].float(),
                self.state,
            )
            ref.block = block
            ref.branch = "content" if block in CONTENT_BLOCKS else "style"
            parent.attn2 = ref

    def eps(self, x, sigma, context, tokens_for_site):
        ms = self.base.model_sampling
        self.state["tokens"] = tokens_for_site
        sig = torch.full((x.shape[0],), sigma)
        out = self.unet(
            ms.calculate_input(sig, x),
            ms.timestep(sig).float(),
            context=context.expand(x.shape[0], -1, -1),
            transformer_options={},
        )
        return ms.calculate_denoised(sig, out, x)


def official_tokens(contributions, negative: bool):
    """Per site: each contribution's tokens (zeros for an unused branch and in the negative pass)."""

    def for_site(ref):
        result = []
        for inj in contributions:
            if not inj["active"]:
                continue
            tokens = inj.get(ref.branch)
            count = 16 if tokens is None else tokens.shape[1]
            if negative or tokens is None:
                result.append((torch.zeros(1, count, 64), 1.0))
            else:
                result.append((tokens, inj[ref.branch + "_weight"]))
        return result

    return for_site


@torch.inference_mode()
def reference_denoised(ref, x, sigma, cond, uncond, contributions, cfg):
    cond_d = ref.eps(x, sigma, cond, official_tokens(contributions, negative=False))
    if cfg == 1.0:
        return cond_d
    uncond_d = ref.eps(x, sigma, uncond, official_tokens(contributions, negative=True))
    return uncond_d + cfg * (cond_d - uncond_d)


# ---------------------------------------------------------------- graphs


@pytest.fixture(scope="module")
def official_sd():
    return deadiff_fakes.make_official_state_dict(seed=0)


@pytest.fixture(scope="module")
def deadiff_name(comfy, official_sd):
    path = comfy.base / "models" / "deadiff" / "tiny_deadiff_v1.ckpt"
    if not path.exists():
        deadiff_fakes.write_official_ckpt(path, official_sd)
    return path.name


def build(
    deadiff_name,
    *,
    style=True,
    content=False,
    style_weight=1.0,
    content_weight=1.0,
    start_at=0.0,
    end_at=1.0,
    cfg=7.5,
    batch=1,
    key="probe",
    second_apply=None,
    apply=True,
):
    g = Graph()
    tiny = g.node("DEADiffTest_TinySD15", seed=0)
    pos = g.node("CLIPTextEncode", clip=tiny[1], text="a lighthouse on a cliff")
    neg = g.node("CLIPTextEncode", clip=tiny[1], text="blurry, lowres")
    loader = g.node("DEADiffModelLoader", deadiff_name=deadiff_name)
    image = g.node("DEADiffTest_ImageFromSeed", seed=1, width=96, height=64, batch_size=1, channels=3)
    nodes = {"tiny": tiny, "pos": pos, "neg": neg}
    model = tiny[0]
    if apply:
        extra = {}
        if style:
            nodes["style"] = extra["style"] = g.node("DEADiffStyleEncoder", deadiff=loader, image=image)
        if content:
            nodes["content"] = extra["content"] = g.node("DEADiffContentEncoder", deadiff=loader, image=image)
        nodes["apply"] = g.node(
            "DEADiffApply",
            model=model,
            deadiff=loader,
            style_weight=style_weight,
            content_weight=content_weight,
            start_at=start_at,
            end_at=end_at,
            **extra,
        )
        model = nodes["apply"][0]
        if second_apply:
            image2 = g.node("DEADiffTest_ImageFromSeed", seed=2, width=64, height=64, batch_size=1, channels=3)
            nodes["style2"] = g.node("DEADiffStyleEncoder", deadiff=loader, image=image2)
            nodes["apply2"] = g.node("DEADiffApply", model=model, deadiff=loader, style=nodes["style2"], **second_apply)
            model = nodes["apply2"][0]
    sampler = g.node("DEADiffTest_ProbeSampler", key=key)
    sigmas = g.node("BasicScheduler", model=tiny[0], scheduler="normal", steps=STEPS, denoise=1.0)
    latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=batch)
    nodes["sample"] = g.node(
        "SamplerCustom",
        model=model,
        add_noise=True,
        noise_seed=42,
        cfg=cfg,
        positive=pos,
        negative=neg,
        sampler=sampler,
        sigmas=sigmas,
        latent_image=latent,
    )
    for name, node in list(nodes.items()):  # output nodes, so that ComfyUI runs (and keeps) all of these
        if name == "sample":
            g.node("DEADiffTest_CaptureLatent", samples=node, key=f"{key}-{name}")
        else:
            g.node("DEADiffTest_Keep", value=node, key=f"{key}-{name}")
    return g.prompt, nodes


def probe_module(comfy):
    return comfy.module("DEADiffTest_ProbeSampler")


def check_against_reference(comfy, official_sd, out, nodes, contributions, cfg, key):
    """Every step `out`'s graph recorded under `key` must match the reference's prediction."""
    ref = ReferenceUNet(out[nodes["tiny"].id][0], official_sd)
    cond = out[nodes["pos"].id][0][0][0]
    uncond = out[nodes["neg"].id][0][0][0]
    records = probe_module(comfy).recorded(key)
    assert len(records) == STEPS
    for sigma, x, denoised in records:
        active = [dict(inj, active=inj["window"](sigma)) for inj in contributions]
        expected = reference_denoised(ref, x, sigma, cond, uncond, active, cfg)
        assert_matches(denoised, expected)
    return records


TOLERANCE = 2e-5


def assert_matches(actual, expected, tolerance=TOLERANCE):
    """fp32 agreement relative to the prediction's scale (a random tiny UNet predicts values of tens;
    CFG 7.5 amplifies rounding differences between batched and per-pass attention)."""
    error = (actual - expected).abs().max() / expected.abs().max()
    assert error <= tolerance, f"max error {error:.2e} of the prediction's scale (allowed {tolerance:.0e})"


def tokens_of(out, node):
    return out[node.id][0].tokens


@pytest.mark.parametrize(
    "style,content,weight",
    [(True, False, 1.0), (False, True, 1.0), (True, True, 1.0), (True, True, 0.6), (True, False, 0.6)],
)
def test_prediction_matches_reference(comfy, official_sd, deadiff_name, style, content, weight):
    key = f"ref-{style}-{content}-{weight}"
    prompt, nodes = build(
        deadiff_name, style=style, content=content, style_weight=weight, content_weight=weight, key=key
    )
    out = comfy.run(prompt)
    inj = {"window": lambda s: True, "style_weight": weight, "content_weight": weight}
    if style:
        inj["style"] = tokens_of(out, nodes["style"])
    if content:
        inj["content"] = tokens_of(out, nodes["content"])
    check_against_reference(comfy, official_sd, out, nodes, [inj], 7.5, key)


def test_reference_differs_without_deadiff(comfy, official_sd, deadiff_name):
    """The comparison above can fail: the reference with zero tokens only is another prediction."""
    prompt, nodes = build(deadiff_name, key="plain-vs-ref")
    out = comfy.run(prompt)
    ref = ReferenceUNet(out[nodes["tiny"].id][0], official_sd)
    sigma, x, denoised = probe_module(comfy).recorded("plain-vs-ref")[0]
    cond = out[nodes["pos"].id][0][0][0]
    uncond = out[nodes["neg"].id][0][0][0]
    no_style = reference_denoised(ref, x, sigma, cond, uncond, [{"active": True}], 7.5)
    effect = (denoised - no_style).abs().max() / no_style.abs().max()
    assert effect > 100 * TOLERANCE, f"the style tokens change the prediction by only {effect:.1e}"


def test_window_follows_percent_to_sigma(comfy, official_sd, deadiff_name):
    key = "window"
    prompt, nodes = build(deadiff_name, start_at=0.3, end_at=0.8, key=key)
    out = comfy.run(prompt)
    sampling = out[nodes["tiny"].id][0].get_model_object("model_sampling")
    start, end = sampling.percent_to_sigma(0.3), sampling.percent_to_sigma(0.8)
    inj = {"window": lambda s: end <= s <= start, "style": tokens_of(out, nodes["style"]), "style_weight": 1.0}
    records = check_against_reference(comfy, official_sd, out, nodes, [inj], 7.5, key)
    inside = [end <= sigma <= start for sigma, _, _ in records]
    assert any(inside) and not all(inside), f"window should cover some steps only: {inside}"


def test_cfg_one_runs_the_cond_pass_only(comfy, official_sd, deadiff_name):
    key = "cfg1"
    prompt, nodes = build(deadiff_name, cfg=1.0, key=key)
    out = comfy.run(prompt)
    inj = {"window": lambda s: True, "style": tokens_of(out, nodes["style"]), "style_weight": 1.0}
    check_against_reference(comfy, official_sd, out, nodes, [inj], 1.0, key)


def test_latent_batch_of_two(comfy, official_sd, deadiff_name):
    key = "batch2"
    prompt, nodes = build(deadiff_name, batch=2, key=key)
    out = comfy.run(prompt)
    inj = {"window": lambda s: True, "style": tokens_of(out, nodes["style"]), "style_weight": 1.0}
    check_against_reference(comfy, official_sd, out, nodes, [inj], 7.5, key)


def test_two_apply_nodes_compose(comfy, official_sd, deadiff_name):
    key = "two-applies"
    prompt, nodes = build(
        deadiff_name, key=key, second_apply={"style_weight": 0.5, "content_weight": 1.0, "start_at": 0.0, "end_at": 1.0}
    )
    out = comfy.run(prompt)
    first = {"window": lambda s: True, "style": tokens_of(out, nodes["style"]), "style_weight": 1.0}
    second = {"window": lambda s: True, "style": tokens_of(out, nodes["style2"]), "style_weight": 0.5}
    check_against_reference(comfy, official_sd, out, nodes, [first, second], 7.5, key)


def test_input_model_is_not_mutated_and_runs_repeat_exactly(comfy, deadiff_name):
    prompt, nodes = build(deadiff_name, key="repeat-a")
    out = comfy.run(prompt)
    base = out[nodes["tiny"].id][0]
    assert "patches_replace" not in base.model_options.get("transformer_options", {})
    patched = out[nodes["apply"].id][0]
    assert len(patched.model_options["transformer_options"]["patches_replace"]["attn2"]) == 16
    first = out[nodes["sample"].id][0]["samples"]
    prompt, nodes = build(deadiff_name, key="repeat-b")
    second = comfy.run(prompt)[nodes["sample"].id][0]["samples"]
    assert torch.equal(first, second)
