"""DEADiff next to the rest of a ComfyUI graph: LoRA, ControlNet, other model patches, other packs."""

from __future__ import annotations

import sys

import pytest
import torch

import deadiff_fakes
from graphs import Graph


@pytest.fixture(scope="module")
def deadiff_name(comfy):
    return deadiff_fakes.place(comfy.base / "models" / "deadiff", "tiny_composition.ckpt", seed=5)


@pytest.fixture(scope="module")
def lora_name(comfy):
    path = comfy.base / "models" / "loras" / "tiny_lora.safetensors"
    if not path.exists():
        comfy.module("DEADiffTest_TinySD15").write_tiny_lora(str(path), seed=1)
    return path.name


def graph(deadiff_name, *, lora=None, lora_first=True, controlnet=False, freeu=False, apply=True, steps=3, size=64):
    """TinySD15 -> [LoRA] -> [DEADiff Apply] -> [LoRA] -> [FreeU] -> KSampler with [ControlNet] conditioning."""
    g = Graph()
    tiny = g.node("DEADiffTest_TinySD15", seed=0)
    pos = g.node("CLIPTextEncode", clip=tiny[1], text="a red barn")
    neg = g.node("CLIPTextEncode", clip=tiny[1], text="lowres")
    model = tiny[0]

    def add_lora(m):
        return g.node("LoraLoaderModelOnly", model=m, lora_name=lora, strength_model=1.0)[0]

    if lora and lora_first:
        model = add_lora(model)
    if apply:
        loader = g.node("DEADiffModelLoader", deadiff_name=deadiff_name)
        image = g.node("DEADiffTest_ImageFromSeed", seed=9, width=64, height=64, batch_size=1, channels=3)
        style = g.node("DEADiffStyleEncoder", deadiff=loader, image=image)
        model = g.node(
            "DEADiffApply",
            model=model,
            deadiff=loader,
            style_weight=1.0,
            content_weight=1.0,
            start_at=0.0,
            end_at=1.0,
            style=style,
        )[0]
    if lora and not lora_first:
        model = add_lora(model)
    if freeu:
        model = g.node("FreeU_V2", model=model, b1=1.3, b2=1.4, s1=0.9, s2=0.2)[0]
    if controlnet:
        cn = g.node("DEADiffTest_TinyControlNet", seed=2)
        hint = g.node("DEADiffTest_ImageFromSeed", seed=3, width=64, height=64, batch_size=1, channels=3)
        applied = g.node(
            "ControlNetApplyAdvanced",
            positive=pos,
            negative=neg,
            control_net=cn,
            image=hint,
            strength=1.0,
            start_percent=0.0,
            end_percent=1.0,
        )
        pos, neg = applied[0], applied[1]
    latent = g.node("EmptyLatentImage", width=size, height=size, batch_size=1)
    sample = g.node(
        "KSampler",
        model=model,
        seed=11,
        steps=steps,
        cfg=8.0,
        sampler_name="euler",
        scheduler="normal",
        positive=pos,
        negative=neg,
        latent_image=latent,
        denoise=1.0,
    )
    g.node("DEADiffTest_CaptureLatent", samples=sample, key="composition")
    return g.prompt, sample


def samples(comfy, prompt, sample):
    out = comfy.run(prompt)[sample.id][0]["samples"]
    assert torch.isfinite(out).all()
    return out


def test_lora_before_or_after_apply_gives_the_same_image(comfy, deadiff_name, lora_name):
    before = samples(comfy, *graph(deadiff_name, lora=lora_name, lora_first=True))
    after = samples(comfy, *graph(deadiff_name, lora=lora_name, lora_first=False))
    without = samples(comfy, *graph(deadiff_name))
    torch.testing.assert_close(before, after, rtol=1e-5, atol=1e-5)
    assert (before - without).abs().max() > 1e-3, "the LoRA should change the result"


def test_controlnet_and_freeu_compose_with_deadiff(comfy, deadiff_name):
    plain = samples(comfy, *graph(deadiff_name))
    with_cn = samples(comfy, *graph(deadiff_name, controlnet=True))
    assert (with_cn - plain).abs().max() > 1e-3
    # FreeU normalises by each feature map's max - min: give it more than 1x1 maps at the deepest level
    with_freeu = samples(comfy, *graph(deadiff_name, freeu=True, size=128))
    assert (with_freeu - samples(comfy, *graph(deadiff_name, size=128))).abs().max() > 1e-3
    no_deadiff_cn = samples(comfy, *graph(deadiff_name, controlnet=True, apply=False))
    assert (with_cn - no_deadiff_cn).abs().max() > 1e-3, "DEADiff should still act with a ControlNet"


def call_node(comfy, node_id, **inputs):
    cls = comfy.nodes.NODE_CLASS_MAPPINGS[node_id]
    return getattr(cls(), cls.FUNCTION)(**inputs)


def ksample(comfy, model, steps=2):
    _, clip, _ = call_node(comfy, "DEADiffTest_TinySD15", seed=0)
    pos = call_node(comfy, "CLIPTextEncode", clip=clip, text="a red barn")[0]
    neg = call_node(comfy, "CLIPTextEncode", clip=clip, text="lowres")[0]
    latent = call_node(comfy, "EmptyLatentImage", width=64, height=64, batch_size=1)[0]
    return call_node(
        comfy,
        "KSampler",
        model=model,
        seed=11,
        steps=steps,
        cfg=8.0,
        sampler_name="euler",
        scheduler="normal",
        positive=pos,
        negative=neg,
        latent_image=latent,
        denoise=1.0,
    )[0]["samples"]


def deadiff_on(comfy, deadiff_name, model):
    (deadiff,) = call_node(comfy, "DEADiffModelLoader", deadiff_name=deadiff_name)
    image = call_node(comfy, "DEADiffTest_ImageFromSeed", seed=9, width=64, height=64, batch_size=1, channels=3)[0]
    style, _preview = call_node(comfy, "DEADiffStyleEncoder", deadiff=deadiff, image=image)
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


def scaled_plain(q, k, v, extra_options):
    """A patch without models() or to(): plain attention times 1.5, so its contribution is 0.5 x plain."""
    from comfy.ldm.modules.attention import optimized_attention

    return 1.5 * optimized_attention(q, k, v, extra_options["n_heads"])


def test_a_plain_function_patch_set_after_deadiff_under_its_key_is_combined(comfy, deadiff_name):
    """ComfyUI's own set_model_attn2_replace(patch, "output", 9, 0) after DEADiff replaces DEADiff's
    entry; DEADiff still acts there and so does the function (neither is dropped)."""
    tiny = call_node(comfy, "DEADiffTest_TinySD15", seed=0)[0]
    patched = deadiff_on(comfy, deadiff_name, tiny)
    over = patched.clone()
    over.set_model_attn2_replace(scaled_plain, "output", 9, 0)
    under = patched.clone()
    under.set_model_attn2_replace(scaled_plain, "output", 9)
    before = tiny.clone()
    before.set_model_attn2_replace(scaled_plain, "output", 9, 0)
    first = deadiff_on(comfy, deadiff_name, before)
    results = [ksample(comfy, m) for m in (over, under, first)]
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)
    torch.testing.assert_close(results[0], results[2], rtol=0, atol=0)
    assert (results[0] - ksample(comfy, patched)).abs().max() > 1e-3, "the function's effect is there"
    function_alone = tiny.clone()
    function_alone.set_model_attn2_replace(scaled_plain, "output", 9, 0)
    assert (results[0] - ksample(comfy, function_alone)).abs().max() > 1e-3, "DEADiff's effect is there"
    replace = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert all(type(p).__name__ == "DEADiffSitePatch" for p in replace.values()) and len(replace) == 16


class RaisingPatch:
    def __call__(self, q, k, v, extra_options):
        raise RuntimeError("this patch always fails")


class NarrowPatch:
    def __call__(self, q, k, v, extra_options):
        return q[:, :, : q.shape[-1] // 2]


@pytest.mark.parametrize(
    "patch,message",
    [
        (
            RaisingPatch(),
            r"test_composition\.RaisingPatch at \('output', 9\).*raised RuntimeError: this patch always fails",
        ),
        (
            NarrowPatch(),
            r"test_composition\.NarrowPatch at \('output', 9\).*returned \(2, 64, 16\) where the "
            r"attention output is \(2, 64, 32\)",
        ),
    ],
)
def test_a_patch_that_cannot_be_combined_is_a_clear_error(comfy, deadiff_name, patch, message):
    tiny = call_node(comfy, "DEADiffTest_TinySD15", seed=0)[0].clone()
    tiny.set_model_attn2_replace(patch, "output", 9)
    patched = deadiff_on(comfy, deadiff_name, tiny)
    composition = sys.modules[comfy.pack.__name__.rsplit(".", 1)[0] + ".composition"]
    with pytest.raises(composition.CompositionError, match=message):
        ksample(comfy, patched, steps=1)


def test_sdxl_model_is_refused_by_name(comfy, deadiff_name):
    g = Graph()
    tiny = g.node("DEADiffTest_TinySD15", seed=0)
    pos = g.node("CLIPTextEncode", clip=tiny[1], text="a red barn")
    xl = g.node("DEADiffTest_TinySDXL", seed=0)
    loader = g.node("DEADiffModelLoader", deadiff_name=deadiff_name)
    apply = g.node(
        "DEADiffApply", model=xl[0], deadiff=loader, style_weight=1.0, content_weight=1.0, start_at=0.0, end_at=1.0
    )
    latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=1)
    sample = g.node(
        "KSampler",
        model=apply,
        seed=1,
        steps=1,
        cfg=1.0,
        sampler_name="euler",
        scheduler="normal",
        positive=pos,
        negative=pos,
        latent_image=latent,
        denoise=1.0,
    )
    g.node("DEADiffTest_CaptureLatent", samples=sample, key="sdxl")
    with pytest.raises(AssertionError, match="DEADiffApply failed: ValueError: .*this MODEL is SDXL"):
        comfy.run(g.prompt)


def test_start_after_end_is_refused(comfy, deadiff_name):
    model = call_node(comfy, "DEADiffTest_TinySD15", seed=0)[0]
    (deadiff,) = call_node(comfy, "DEADiffModelLoader", deadiff_name=deadiff_name)
    with pytest.raises(ValueError, match=r"start_at \(0.7\) is after end_at \(0.2\)"):
        call_node(
            comfy,
            "DEADiffApply",
            model=model,
            deadiff=deadiff,
            style_weight=1.0,
            content_weight=1.0,
            start_at=0.7,
            end_at=0.2,
        )


def test_tokens_from_a_deadiff_file_of_other_dimensions_are_refused(comfy, deadiff_name):
    wide = deadiff_fakes.place(
        comfy.base / "models" / "deadiff", "tiny_wide.safetensors", seed=8, qformer_hidden=128, frozen_parts=False
    )
    (wide_deadiff,) = call_node(comfy, "DEADiffModelLoader", deadiff_name=wide)
    (deadiff,) = call_node(comfy, "DEADiffModelLoader", deadiff_name=deadiff_name)
    image = call_node(comfy, "DEADiffTest_ImageFromSeed", seed=1, width=64, height=64, batch_size=1, channels=3)[0]
    wide_style, _preview = call_node(comfy, "DEADiffStyleEncoder", deadiff=wide_deadiff, image=image)
    content, _preview = call_node(comfy, "DEADiffContentEncoder", deadiff=deadiff, image=image)
    model = call_node(comfy, "DEADiffTest_TinySD15", seed=0)[0]
    with pytest.raises(ValueError, match="These style tokens are 128 wide but tiny_composition.ckpt expects 64"):
        call_node(
            comfy,
            "DEADiffApply",
            model=model,
            deadiff=deadiff,
            style_weight=1.0,
            content_weight=1.0,
            start_at=0.0,
            end_at=1.0,
            style=wide_style,
        )
    with pytest.raises(ValueError, match="The style input got content tokens"):
        call_node(
            comfy,
            "DEADiffApply",
            model=model,
            deadiff=deadiff,
            style_weight=1.0,
            content_weight=1.0,
            start_at=0.0,
            end_at=1.0,
            style=content,
        )
    with pytest.raises(ValueError, match="made for a UNet with width 32 and a 128-wide text context"):
        call_node(
            comfy,
            "DEADiffApply",
            model=model,
            deadiff=wide_deadiff,
            style_weight=1.0,
            content_weight=1.0,
            start_at=0.0,
            end_at=1.0,
            style=wide_style,
        )
