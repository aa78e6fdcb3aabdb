"""DEADiff next to the rest of a ComfyUI graph: LoRA, ControlNet, other model patches, other packs."""
from __future__ import annotations

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
        model = g.node("DEADiffApply", model=model, deadiff=loader, style_weight=1.0, content_weight=1.0,
                       start_at=0.0, end_at=1.0, style=style)[0]
    if lora and not lora_first:
        model = add_lora(model)
    if freeu:
        model = g.node("FreeU_V2", model=model, b1=1.3, b2=1.4, s1=0.9, s2=0.2)[0]
    if controlnet:
        cn = g.node("DEADiffTest_TinyControlNet", seed=2)
        hint = g.node("DEADiffTest_ImageFromSeed", seed=3, width=64, height=64, batch_size=1, channels=3)
        applied = g.node("ControlNetApplyAdvanced", positive=pos, negative=neg, control_net=cn, image=hint,
                         strength=1.0, start_percent=0.0, end_percent=1.0)
        pos, neg = applied[0], applied[1]
    latent = g.node("EmptyLatentImage", width=size, height=size, batch_size=1)
    sample = g.node("KSampler", model=model, seed=11, steps=steps, cfg=8.0, sampler_name="euler",
                    scheduler="normal", positive=pos, negative=neg, latent_image=latent, denoise=1.0)
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


def test_another_packs_attn2_replace_is_never_dropped(comfy, deadiff_name):
    model = call_node(comfy, "DEADiffTest_TinySD15", seed=0)[0].clone()

    def foreign_patch(q, k, v, extra_options):
        return q

    model.set_model_attn2_replace(foreign_patch, "output", 9)
    (deadiff,) = call_node(comfy, "DEADiffModelLoader", deadiff_name=deadiff_name)
    with pytest.raises(ValueError, match=r"another node pack's cross-attention replacement at \('output', 9\)"):
        call_node(comfy, "DEADiffApply", model=model, deadiff=deadiff, style_weight=1.0, content_weight=1.0,
                  start_at=0.0, end_at=1.0)
    replace = model.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert replace[("output", 9)] is foreign_patch and len(replace) == 1


def test_sdxl_model_is_refused_by_name(comfy, deadiff_name):
    g = Graph()
    tiny = g.node("DEADiffTest_TinySD15", seed=0)
    pos = g.node("CLIPTextEncode", clip=tiny[1], text="a red barn")
    xl = g.node("DEADiffTest_TinySDXL", seed=0)
    loader = g.node("DEADiffModelLoader", deadiff_name=deadiff_name)
    apply = g.node("DEADiffApply", model=xl[0], deadiff=loader, style_weight=1.0, content_weight=1.0,
                   start_at=0.0, end_at=1.0)
    latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=1)
    sample = g.node("KSampler", model=apply, seed=1, steps=1, cfg=1.0, sampler_name="euler",
                    scheduler="normal", positive=pos, negative=pos, latent_image=latent, denoise=1.0)
    g.node("DEADiffTest_CaptureLatent", samples=sample, key="sdxl")
    with pytest.raises(AssertionError, match="DEADiffApply failed: ValueError: .*this MODEL is SDXL"):
        comfy.run(g.prompt)


def test_start_after_end_is_refused(comfy, deadiff_name):
    model = call_node(comfy, "DEADiffTest_TinySD15", seed=0)[0]
    (deadiff,) = call_node(comfy, "DEADiffModelLoader", deadiff_name=deadiff_name)
    with pytest.raises(ValueError, match=r"start_at \(0.7\) is after end_at \(0.2\)"):
        call_node(comfy, "DEADiffApply", model=model, deadiff=deadiff, style_weight=1.0, content_weight=1.0,
                  start_at=0.7, end_at=0.2)


def test_tokens_from_a_deadiff_file_of_other_dimensions_are_refused(comfy, deadiff_name):
    wide = deadiff_fakes.place(comfy.base / "models" / "deadiff", "tiny_wide.safetensors", seed=8,
                               qformer_hidden=128, frozen_parts=False)
    (wide_deadiff,) = call_node(comfy, "DEADiffModelLoader", deadiff_name=wide)
    (deadiff,) = call_node(comfy, "DEADiffModelLoader", deadiff_name=deadiff_name)
    image = call_node(comfy, "DEADiffTest_ImageFromSeed", seed=1, width=64, height=64, batch_size=1, channels=3)[0]
    (wide_style,) = call_node(comfy, "DEADiffStyleEncoder", deadiff=wide_deadiff, image=image)
    (content,) = call_node(comfy, "DEADiffContentEncoder", deadiff=deadiff, image=image)
    model = call_node(comfy, "DEADiffTest_TinySD15", seed=0)[0]
    with pytest.raises(ValueError, match="These style tokens are 128 wide but tiny_composition.ckpt expects 64"):
        call_node(comfy, "DEADiffApply", model=model, deadiff=deadiff, style_weight=1.0, content_weight=1.0,
                  start_at=0.0, end_at=1.0, style=wide_style)
    with pytest.raises(ValueError, match="The style input got content tokens"):
        call_node(comfy, "DEADiffApply", model=model, deadiff=deadiff, style_weight=1.0, content_weight=1.0,
                  start_at=0.0, end_at=1.0, style=content)
    with pytest.raises(ValueError, match="made for a UNet with width 32 and a 128-wide text context"):
        call_node(comfy, "DEADiffApply", model=model, deadiff=wide_deadiff, style_weight=1.0, content_weight=1.0,
                  start_at=0.0, end_at=1.0, style=wide_style)
