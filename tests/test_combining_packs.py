"""DEADiff together with an IPAdapter-style pack (issue 13), through ComfyUI's own sampler path.

The other pack is the test pack's faithful stand-in of IPAdapter_plus's SD1.5 attn2 patch
(tests/comfy_test_pack/ipadapter_standin.py): two-part keys including its ("middle", 1), `.add` on
the object already there, its own per-site to_k_ip / to_v_ip, a weight and a sigma window.

The reference is written out plainly: a copy of the same UNet whose 16 cross-attentions compute
SPEC §4 (one softmax over [text keys; w * E @ i_to_k^T], values alike; zero tokens in the negative
pass; a DEADiff mask as log(mask) on its image keys) PLUS, at each site the other pack patched and
ComfyUI looks up, w_ip * attention(q, E_ip @ to_k_ip^T, E_ip @ to_v_ip^T) with E_ip its cond tokens
in the cond pass and its uncond tokens in the negative pass, while its sigma window holds. The
middle block gets no IPAdapter term: ComfyUI names it ("middle", 0) and never looks up ("middle", 1).
"""

from __future__ import annotations

import copy

import pytest
import torch

import deadiff_fakes
import reference_deadiff as ref
from graphs import Graph

STEPS = 3
CFG = 7.5
TOLERANCE = 1e-5  # max error relative to the prediction's scale (issue 13)
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
IMAGE = 64  # pixels; the latent is 8x8


def site_name(block: str) -> str:
    return "middle_0" if block == "middle_block" else block.replace("_blocks.", "_")


# ---------------------------------------------------------------- the plain reference


class ReferenceSite(torch.nn.Module):
    def __init__(self, original, block, i_to_k, i_to_v, state):
        super().__init__()
        self.original, self.block, self.i_to_k, self.i_to_v, self.state = original, block, i_to_k, i_to_v, state
        self.branch = "content" if block in CONTENT_BLOCKS else "style"

    def forward(self, x, context=None, value=None, mask=None, transformer_options=None):
        a = self.original
        q, k, v = a.to_q(x), a.to_k(context), a.to_v(context if value is None else value)
        _, _, h, w = transformer_options["activations_shape"]
        out = self.deadiff(q, k, v, h, w)
        for ip in self.state["ipadapters"]:
            if self.block == "middle_block" or not ip["active"] or site_name(self.block) not in ip["sites"]:
                continue
            to_k_ip, to_v_ip = ip["weights"][self.block]
            tokens = ip["weights"]["uncond" if self.state["negative"] else "cond"].expand(q.shape[0], -1, -1)
            out = out + ip["weight"] * ref.attention(q, tokens @ to_k_ip.T, tokens @ to_v_ip.T, a.heads)
        return a.to_out(out)

    def deadiff(self, q, k, v, h, w):
        keys, values, biases = [k], [v], [torch.zeros(q.shape[0], q.shape[1], k.shape[1])]
        for inj in self.state["contributions"]:
            tokens = inj.get(self.branch)
            count = 16 if tokens is None else tokens.shape[1]
            if self.state["negative"] or tokens is None:
                tokens = torch.zeros(1, count, 64)
            weight = inj[self.branch + "_weight"]
            e = tokens.expand(q.shape[0], -1, -1)
            keys.append(weight * e @ self.i_to_k.T)
            values.append(weight * e @ self.i_to_v.T)
            grid = torch.ones(h * w) if inj.get("mask") is None else cell_mean(inj["mask"], h, w)
            biases.append(torch.log(grid)[None, :, None].expand(q.shape[0], -1, count))
        return ref.attention_with_bias(
            q, torch.cat(keys, 1), torch.cat(values, 1), self.original.heads, torch.cat(biases, 2)
        )


def cell_mean(mask, h, w):
    """The share of each cell of an h x w grid the (H, W) mask covers (H, W multiples of h, w)."""
    H, W = mask.shape
    return mask.reshape(h, H // h, w, W // w).mean(dim=(1, 3)).flatten()


class ReferenceUNet:
    @torch.inference_mode()
    def __init__(self, model_patcher, official_sd):
        self.base = model_patcher.model
        self.unet = copy.deepcopy(self.base.diffusion_model)
        self.state = {"contributions": [], "ipadapters": [], "negative": False}
        for block in SITE_BLOCKS:
            parent = self.unet.get_submodule(f"{block}.1.transformer_blocks.0")
            ckpt = f"model.diffusion_model.{block}.1.transformer_blocks.0.attn2."
            parent.attn2 = ReferenceSite(
                parent.attn2,
                block,
                official_sd[ckpt + "i_to_k.weight"].float(),
                official_sd[ckpt + "i_to_v.weight"].float(),
                self.state,
            )

    @torch.inference_mode()
    def eps(self, x, sigma, context, negative):
        ms = self.base.model_sampling
        self.state["negative"] = negative
        sig = torch.full((x.shape[0],), sigma)
        out = self.unet(
            ms.calculate_input(sig, x),
            ms.timestep(sig).float(),
            context=context.expand(x.shape[0], -1, -1),
            transformer_options={},
        )
        return ms.calculate_denoised(sig, out, x)

    def denoised(self, x, sigma, cond, uncond, contributions, ipadapters, cfg=CFG):
        self.state["contributions"] = contributions
        self.state["ipadapters"] = [dict(ip, active=ip["sigma_end"] <= sigma <= ip["sigma_start"]) for ip in ipadapters]
        cond_d = self.eps(x, sigma, cond, negative=False)
        if cfg == 1.0:
            return cond_d
        uncond_d = self.eps(x, sigma, uncond, negative=True)
        return uncond_d + cfg * (cond_d - uncond_d)


# ---------------------------------------------------------------- graphs


@pytest.fixture(scope="module")
def official_sd():
    return deadiff_fakes.make_official_state_dict(seed=13)


@pytest.fixture(scope="module")
def deadiff_name(comfy, official_sd):
    path = comfy.base / "models" / "deadiff" / "tiny_combining.ckpt"
    if not path.exists():
        deadiff_fakes.write_official_ckpt(path, official_sd)
    return path.name


def left_half_mask():
    mask = torch.zeros(1, IMAGE, IMAGE)
    mask[:, :, : IMAGE // 2] = 1.0
    return mask


def build(deadiff_name, chain, key, *, cfg=CFG, mask=False):
    """TinySD15 -> the `chain` of patches in order -> SamplerCustom with the probe sampler.
    chain items: "deadiff", or a dict of stand-in inputs (seed, weight, start_at, end_at, sites, key_form)."""
    g = Graph()
    tiny = g.node("DEADiffTest_TinySD15", seed=0)
    pos = g.node("CLIPTextEncode", clip=tiny[1], text="a castle by the sea")
    neg = g.node("CLIPTextEncode", clip=tiny[1], text="blurry")
    nodes = {"tiny": tiny, "pos": pos, "neg": neg}
    model = tiny[0]
    for i, item in enumerate(chain):
        if item == "deadiff":
            loader = g.node("DEADiffModelLoader", deadiff_name=deadiff_name)
            image = g.node("DEADiffTest_ImageFromSeed", seed=3, width=64, height=64, batch_size=1, channels=3)
            nodes["style"] = g.node("DEADiffStyleEncoder", deadiff=loader, image=image)
            extra = {}
            if mask:  # 1 on the left half, 0 on the right
                empty = g.node("SolidMask", value=0.0, width=IMAGE, height=IMAGE)
                half = g.node("SolidMask", value=1.0, width=IMAGE // 2, height=IMAGE)
                nodes["mask"] = extra["attn_mask"] = g.node(
                    "MaskComposite", destination=empty, source=half, x=0, y=0, operation="add"
                )
            nodes["apply"] = g.node(
                "DEADiffApply",
                model=model,
                deadiff=loader,
                style_weight=1.0,
                content_weight=1.0,
                start_at=0.0,
                end_at=1.0,
                style=nodes["style"],
                **extra,
            )
            model = nodes["apply"][0]
        else:
            inputs = {"seed": 7, "weight": 1.0, "start_at": 0.0, "end_at": 1.0, **item}
            node = g.node("DEADiffTest_IPAdapterStandIn", model=model, **inputs)
            nodes[f"ip{i}"] = node
            model = node[0]
    sampler = g.node("DEADiffTest_ProbeSampler", key=key)
    sigmas = g.node("BasicScheduler", model=tiny[0], scheduler="normal", steps=STEPS, denoise=1.0)
    latent = g.node("EmptyLatentImage", width=IMAGE, height=IMAGE, batch_size=1)
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
    for name, node in list(nodes.items()):
        if name == "sample":
            g.node("DEADiffTest_CaptureLatent", samples=node, key=f"{key}-{name}")
        else:
            g.node("DEADiffTest_Keep", value=node, key=f"{key}-{name}")
    return g.prompt, nodes


def standin_module(comfy):
    return comfy.module("DEADiffTest_IPAdapterStandIn")


def ipadapter_reference(comfy, tiny, seed=7, weight=1.0, start_at=0.0, end_at=1.0, sites="all", **_):
    """What the reference needs of one stand-in: its weights (from its seed), weight, window, sites."""
    module = standin_module(comfy)
    sampling = tiny.get_model_object("model_sampling")
    names = {name for _, name, _ in module.site_order()}
    return {
        "weights": module.standin_weights(seed, module.site_widths(tiny)),
        "weight": weight,
        "sigma_start": float(sampling.percent_to_sigma(start_at)),
        "sigma_end": float(sampling.percent_to_sigma(end_at)),
        "sites": names if sites == "all" else {s.strip() for s in sites.split(",")},
    }


def run_and_check(comfy, official_sd, deadiff_name, chain, key, *, cfg=CFG, mask=False, check=True):
    """Run the graph; check every step's prediction against the reference; return (samples, records, context)."""
    prompt, nodes = build(deadiff_name, chain, key, cfg=cfg, mask=mask)
    out = comfy.run(prompt)
    tiny = out[nodes["tiny"].id][0]
    contributions = []
    if "deadiff" in chain:
        inj = {"style": out[nodes["style"].id][0].tokens, "style_weight": 1.0, "content_weight": 1.0}
        if mask:
            inj["mask"] = out[nodes["mask"].id][0][0]
            torch.testing.assert_close(inj["mask"], left_half_mask()[0])
        contributions.append(inj)
    ipadapters = [ipadapter_reference(comfy, tiny, **item) for item in chain if item != "deadiff"]
    context = {
        "ref": ReferenceUNet(tiny, official_sd),
        "cond": out[nodes["pos"].id][0][0][0],
        "uncond": out[nodes["neg"].id][0][0][0],
        "contributions": contributions,
        "ipadapters": ipadapters,
        "out": out,
        "nodes": nodes,
    }
    records = comfy.module("DEADiffTest_ProbeSampler").recorded(key)
    assert len(records) == STEPS
    if check:
        for sigma, x, denoised in records:
            expected = context["ref"].denoised(
                x, sigma, context["cond"], context["uncond"], contributions, ipadapters, cfg
            )
            assert_matches(denoised, expected)
    return out[nodes["sample"].id][0]["samples"], records, context


def relative_error(actual, expected):
    return float((actual - expected).abs().max() / expected.abs().max())


def assert_matches(actual, expected, tolerance=TOLERANCE):
    error = relative_error(actual, expected)
    assert error <= tolerance, f"max error {error:.2e} of the prediction's scale (allowed {tolerance:.0e})"


# ---------------------------------------------------------------- tests


def test_both_orders_give_the_same_prediction_as_the_reference(comfy, official_sd, deadiff_name):
    ip = {"seed": 7, "weight": 0.8}
    before, rec_before, ctx = run_and_check(comfy, official_sd, deadiff_name, [ip, "deadiff"], "ip-then-dd")
    after, rec_after, _ = run_and_check(comfy, official_sd, deadiff_name, ["deadiff", ip], "dd-then-ip")
    for (_, _, a), (_, _, b) in zip(rec_before, rec_after):
        assert torch.equal(a, b), "both orders must run the very same computation"
    assert torch.equal(before, after)
    # the check above can fail: the IPAdapter's uncond tokens in the negative pass matter
    sigma, x, denoised = rec_before[0]
    swapped = [dict(ip, weights={**ip["weights"], "uncond": ip["weights"]["cond"]}) for ip in ctx["ipadapters"]]
    wrong = ctx["ref"].denoised(x, sigma, ctx["cond"], ctx["uncond"], ctx["contributions"], swapped)
    assert relative_error(denoised, wrong) > 100 * TOLERANCE


def test_neither_effect_can_be_removed(comfy, official_sd, deadiff_name):
    """DEADiff + IPAdapter differs from each alone; each alone matches the same reference (so the
    stand-in alone behaves in ComfyUI as the reference says, ("middle", 1) never running)."""
    ip = {"seed": 7, "weight": 0.8}
    both, records, ctx = run_and_check(comfy, official_sd, deadiff_name, ["deadiff", ip], "both")
    only_ip, _, _ = run_and_check(comfy, official_sd, deadiff_name, [ip], "only-ip")
    only_dd, _, _ = run_and_check(comfy, official_sd, deadiff_name, ["deadiff"], "only-dd")
    plain, _, _ = run_and_check(comfy, official_sd, deadiff_name, [], "plain")
    for other in (only_ip, only_dd, plain):
        assert relative_error(both, other) > 100 * TOLERANCE
    # per step too: dropping either term from the reference misses the prediction
    sigma, x, denoised = records[0]
    for contributions, ipadapters in (([], ctx["ipadapters"]), (ctx["contributions"], [])):
        partial = ctx["ref"].denoised(x, sigma, ctx["cond"], ctx["uncond"], contributions, ipadapters)
        assert relative_error(denoised, partial) > 100 * TOLERANCE


def test_two_ipadapters_and_deadiff_in_any_order(comfy, official_sd, deadiff_name):
    """The second IPAdapter `.add`s itself to the first one's patch objects, after or before DEADiff."""
    first = {"seed": 7, "weight": 0.7}
    second = {"seed": 8, "weight": 1.2, "start_at": 0.0, "end_at": 0.5}  # active on some steps only
    a, records, ctx = run_and_check(comfy, official_sd, deadiff_name, [first, "deadiff", second], "ip-dd-ip")
    b, _, _ = run_and_check(comfy, official_sd, deadiff_name, [first, second, "deadiff"], "ip-ip-dd")
    c, _, _ = run_and_check(comfy, official_sd, deadiff_name, ["deadiff", first, second], "dd-ip-ip")
    assert torch.equal(a, b) and torch.equal(a, c)
    window = ctx["ipadapters"][1]
    inside = [window["sigma_end"] <= sigma <= window["sigma_start"] for sigma, _, _ in records]
    assert any(inside) and not all(inside), f"the second IPAdapter should act on some steps only: {inside}"


def test_with_a_deadiff_mask(comfy, official_sd, deadiff_name):
    ip = {"seed": 9, "weight": 1.0}
    a, _, _ = run_and_check(comfy, official_sd, deadiff_name, [ip, "deadiff"], "mask-ip-dd", mask=True)
    b, _, _ = run_and_check(comfy, official_sd, deadiff_name, ["deadiff", ip], "mask-dd-ip", mask=True)
    assert torch.equal(a, b)


def test_cond_pass_only(comfy, official_sd, deadiff_name):
    """cfg 1: ComfyUI runs the cond pass alone (no cond_or_uncond 1 in the batch)."""
    run_and_check(comfy, official_sd, deadiff_name, [{"seed": 7}, "deadiff"], "cfg1", cfg=1.0)


def test_other_pack_at_some_sites_only(comfy, official_sd, deadiff_name):
    ip = {"seed": 7, "weight": 1.5, "sites": "input_4, output_9, output_3, middle_0"}
    a, _, _ = run_and_check(comfy, official_sd, deadiff_name, [ip, "deadiff"], "some-ip-dd")
    b, _, _ = run_and_check(comfy, official_sd, deadiff_name, ["deadiff", ip], "some-dd-ip")
    assert torch.equal(a, b)


def test_patch_under_deadiffs_own_key_is_kept_and_combined(comfy, official_sd, deadiff_name):
    """A patch under (block, id, 0), DEADiff's own key, applied before DEADiff: DEADiff takes the key,
    keeps that patch (its models() still load with the UNet) and combines it."""
    ip = {"seed": 7, "weight": 0.9, "key_form": "three-part", "manage_weights": True}
    _, _, ctx = run_and_check(comfy, official_sd, deadiff_name, [ip, "deadiff"], "three-part")
    standin = ctx["out"][ctx["nodes"]["ip0"].id][0]
    patched = ctx["out"][ctx["nodes"]["apply"].id][0]
    theirs = standin.model_options["transformer_options"]["patches_replace"]["attn2"][("input", 1, 0)]
    ours = patched.model_options["transformer_options"]["patches_replace"]["attn2"][("input", 1, 0)]
    # ComfyUI 0.3.75 deep-copies a MODEL's patches when it clones it (0.33 shares them)
    assert type(ours.displaced) is type(theirs) and ours.displaced.kwargs[0]["module_key"] == "1"
    assert ours.displaced.models()[0] in ours.models()


def call_node(comfy, node_id, *args, **inputs):
    cls = comfy.nodes.NODE_CLASS_MAPPINGS[node_id]
    return getattr(cls(), cls.FUNCTION)(*args, **inputs)


def snapshot(model):
    """What a MODEL holds that the other pack could change: its attn2 entries, their callbacks, wrappers."""
    attn2 = model.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})
    return (
        {key: (id(p), len(getattr(p, "callbacks", ())), id(getattr(p, "displaced", None))) for key, p in attn2.items()},
        {k: {k1: list(map(id, w1)) for k1, w1 in w.items()} for k, w in model.wrappers.items()},
    )


def ksample(comfy, model, clip):
    pos = call_node(comfy, "CLIPTextEncode", clip=clip, text="a castle by the sea")[0]
    neg = call_node(comfy, "CLIPTextEncode", clip=clip, text="blurry")[0]
    latent = call_node(comfy, "EmptyLatentImage", width=IMAGE, height=IMAGE, batch_size=1)[0]
    return call_node(
        comfy,
        "KSampler",
        model=model,
        seed=5,
        steps=2,
        cfg=CFG,
        sampler_name="euler",
        scheduler="normal",
        positive=pos,
        negative=neg,
        latent_image=latent,
        denoise=1.0,
    )[0]["samples"]


def test_upstream_models_stay_unchanged(comfy, deadiff_name):
    """Applying one pack on top of the other, and sampling the result, changes neither input MODEL."""
    tiny, clip, _ = call_node(comfy, "DEADiffTest_TinySD15", seed=0)
    (deadiff,) = call_node(comfy, "DEADiffModelLoader", deadiff_name=deadiff_name)
    image = call_node(comfy, "DEADiffTest_ImageFromSeed", seed=3, width=64, height=64, batch_size=1, channels=3)[0]
    style, _preview = call_node(comfy, "DEADiffStyleEncoder", deadiff=deadiff, image=image)

    def standin(model):
        return call_node(
            comfy, "DEADiffTest_IPAdapterStandIn", model=model, seed=7, weight=0.8, start_at=0.0, end_at=1.0
        )[0]

    def deadiff_apply(model):
        return call_node(
            comfy,
            "DEADiffApply",
            model=model,
            deadiff=deadiff,
            style_weight=1.0,
            content_weight=1.0,
            start_at=0.0,
            end_at=1.0,
            style=style,
        )[0]

    for first, second in ((standin, deadiff_apply), (deadiff_apply, standin)):
        upstream = first(tiny)
        alone = ksample(comfy, upstream, clip)
        before = snapshot(upstream)
        combined = second(upstream)
        both = ksample(comfy, combined, clip)
        assert snapshot(upstream) == before
        assert torch.equal(ksample(comfy, upstream, clip), alone)
        assert relative_error(both, alone) > 100 * TOLERANCE
