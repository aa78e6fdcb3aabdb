"""One site's attn2 patch, called the way ComfyUI's BasicTransformerBlock calls it, against docs/design.md §6."""

from __future__ import annotations

import copy

import pytest
import torch

import deadiff_fakes
import reference_deadiff as ref
from graphs import Graph

HEADS = 8


@pytest.fixture(scope="module")
def official_sd():
    return deadiff_fakes.make_official_state_dict(seed=3)


@pytest.fixture(scope="module")
def patched(comfy, official_sd):
    path = comfy.base / "models" / "deadiff" / "tiny_site_patch.ckpt"
    deadiff_fakes.write_official_ckpt(path, official_sd)
    g = Graph()
    tiny = g.node("DEADiffTest_TinySD15", seed=0)
    loader = g.node("DEADiffModelLoader", deadiff_name=path.name)
    image = g.node("DEADiffTest_ImageFromSeed", seed=4, width=64, height=80, batch_size=1, channels=3)
    style = g.node("DEADiffStyleEncoder", deadiff=loader, image=image)
    content = g.node("DEADiffContentEncoder", deadiff=loader, image=image)
    apply = g.node(
        "DEADiffApply",
        model=tiny[0],
        deadiff=loader,
        style_weight=0.8,
        content_weight=1.3,
        start_at=0.0,
        end_at=1.0,
        style=style,
        content=content,
    )
    mask = g.node("SolidMask", value=1.0, width=16, height=16)
    masked = g.node(
        "DEADiffApply",
        model=tiny[0],
        deadiff=loader,
        style_weight=1.0,
        content_weight=1.0,
        start_at=0.0,
        end_at=1.0,
        style=style,
        attn_mask=mask,
    )
    for i, node in enumerate((apply, masked, style, content)):
        g.node("DEADiffTest_Keep", value=node, key=f"site-patch-{i}")
    out = comfy.run(g.prompt)
    return {
        "model": out[apply.id][0],
        "masked": out[masked.id][0],
        "style": out[style.id][0].tokens,
        "content": out[content.id][0].tokens,
    }


def site_patch(model, block):
    return model.model_options["transformer_options"]["patches_replace"]["attn2"][block + (0,)]


def call(patch, q, k, v, cond_or_uncond, shape):
    return patch(
        q,
        k,
        v,
        {
            "n_heads": HEADS,
            "cond_or_uncond": list(cond_or_uncond),
            "attn_precision": None,
            "sigmas": torch.ones(q.shape[0]),
            "activations_shape": shape,
        },
    )


@pytest.mark.parametrize(
    "block,branch,weight,prefix",
    [
        (("input", 1), "style", 0.8, "input_blocks.1.1"),
        (("middle", 0), "content", 1.3, "middle_block.1"),
        (("output", 4), "content", 1.3, "output_blocks.4.1"),
        (("output", 11), "style", 0.8, "output_blocks.11.1"),
    ],
)
@pytest.mark.parametrize("order", [(0, 1), (1, 0), (0,), (1,), (0, 0, 1)])
def test_site_output_equals_spec(patched, official_sd, block, branch, weight, prefix, order):
    ckpt = f"model.diffusion_model.{prefix}.transformer_blocks.0.attn2."
    i_to_k, i_to_v = official_sd[ckpt + "i_to_k.weight"], official_sd[ckpt + "i_to_v.weight"]
    width = i_to_k.shape[0]
    chunk, tokens_text, h, w = 2, 77, 4, 6
    gen = torch.Generator().manual_seed(len(order) * 10 + block[1])
    q = torch.randn(chunk * len(order), h * w, width, generator=gen)
    k = torch.randn(chunk * len(order), tokens_text, width, generator=gen)
    v = torch.randn(chunk * len(order), tokens_text, width, generator=gen)
    out = call(site_patch(patched["model"], block), q, k, v, order, [q.shape[0], width, h, w])
    e = patched[branch]
    for i, c in enumerate(order):
        sl = slice(i * chunk, (i + 1) * chunk)
        tokens = e if c == 0 else torch.zeros_like(e)  # the negative pass sees 16 zero tokens
        expected = ref.site_attention(q[sl], k[sl], v[sl], [(tokens, weight)], i_to_k, i_to_v, HEADS)
        torch.testing.assert_close(out[sl], expected, rtol=1e-5, atol=1e-5)


def test_zero_tokens_take_softmax_mass(patched):
    """Dropping the negative pass's zero tokens would change the result: they are real keys."""
    patch = site_patch(patched["model"], ("input", 1))
    q, k, v = (torch.randn(1, 12, 32) for _ in range(3))
    out = call(patch, q, k, v, (1,), [1, 32, 3, 4])
    assert not torch.allclose(out, ref.attention(q, k, v, HEADS), atol=1e-4)
    zeros = torch.zeros(1, 16, 32)
    torch.testing.assert_close(out, ref.attention(q, torch.cat([k, zeros], 1), torch.cat([v, zeros], 1), HEADS))


def test_full_mask_equals_no_mask_and_patch_is_shared_by_clones(patched, official_sd):
    q, k, v = (torch.randn(2, 12, 32) for _ in range(3))
    shape = [2, 32, 3, 4]
    masked = site_patch(patched["masked"], ("input", 1))
    unmasked_style_only = call(masked, q, k, v, (0, 1), shape)
    e = patched["style"]
    ckpt = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2."
    i_to_k, i_to_v = official_sd[ckpt + "i_to_k.weight"], official_sd[ckpt + "i_to_v.weight"]
    expected = [
        ref.site_attention(q[i : i + 1], k[i : i + 1], v[i : i + 1], [(tokens, 1.0)], i_to_k, i_to_v, HEADS)
        for i, tokens in enumerate([e, torch.zeros_like(e)])
    ]
    torch.testing.assert_close(unmasked_style_only, torch.cat(expected), rtol=1e-5, atol=1e-5)
    assert copy.deepcopy(masked) is masked
    clone = patched["masked"].clone()
    assert site_patch(clone, ("input", 1)) is masked


def test_mask_keeps_image_tokens_inside_it(comfy, patched, official_sd):
    """Queries where the mask is 0 attend to the text alone; where it is 1, to text and image tokens;
    in between, the image tokens' attention weights are scaled by the mask value."""
    apply = comfy.nodes.NODE_CLASS_MAPPINGS["DEADiffApply"]
    h, w = 4, 6
    mask = torch.zeros(1, h, w)
    mask[:, :, 3:] = 1.0
    mask[:, 0, 0] = 0.5
    deadiff = site_patch(patched["model"], ("input", 1)).contributions[0].deadiff
    tokens = comfy.module("DEADiffStyleEncoder")
    style = tokens.encode(deadiff, torch.rand(1, 32, 32, 3), "style")
    (model,) = apply.execute(patched["model"].clone(), deadiff, 1.0, 1.0, 0.0, 1.0, style=style, attn_mask=mask)
    patch = site_patch(model, ("input", 1))
    assert len(patch.contributions) == 2, "the second Apply composes with the first"
    ckpt = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2."
    i_to_k, i_to_v = official_sd[ckpt + "i_to_k.weight"], official_sd[ckpt + "i_to_v.weight"]
    q, k, v = (torch.randn(2, h * w, 32) for _ in range(3))
    out = call(patch, q, k, v, (0, 1), [2, 32, h, w])
    first = patched["style"]
    for i, negative in enumerate((False, True)):
        e1 = torch.zeros_like(first) if negative else first
        e2 = torch.zeros_like(style.tokens) if negative else style.tokens
        k_img = torch.cat([0.8 * e1 @ i_to_k.T, e2 @ i_to_k.T], 1)
        v_img = torch.cat([0.8 * e1 @ i_to_v.T, e2 @ i_to_v.T], 1)
        text = k.shape[1]
        bias = torch.zeros(1, h * w, text + 32)
        bias[0, :, text + 16 :] = torch.log(mask.flatten()).unsqueeze(-1)  # only the masked contribution's tokens
        expected = ref.attention_with_bias(
            q[i : i + 1], torch.cat([k[i : i + 1], k_img], 1), torch.cat([v[i : i + 1], v_img], 1), HEADS, bias
        )
        torch.testing.assert_close(out[i : i + 1], expected, rtol=1e-5, atol=1e-5)
