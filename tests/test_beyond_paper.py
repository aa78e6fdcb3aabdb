"""Beyond the paper (docs/design.md §7): regional masks, mixing, reference batches, saved tokens, routing and a
negative reference, in the real ComfyUI. Each site's output is compared with the plain docs/design.md §6
reference (tests/reference_deadiff.py) fed with what the feature should mean."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

import deadiff_fakes
import reference_deadiff as ref
from graphs import Graph
from test_site_patch import HEADS, call, site_patch
from test_tiny_models import latent_of, txt2img

TEXT = 77
SITE = ("input", 1)
SITE_KEY = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2."
CONTENT_SITE = ("middle", 0)
CONTENT_KEY = "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2."


@pytest.fixture(scope="module")
def official_sd():
    return deadiff_fakes.make_official_state_dict(seed=11)


@pytest.fixture(scope="module")
def setup(comfy, official_sd):
    """The tiny SD1.5 MODEL, a tiny DEADiff model and two references' style and content tokens."""
    deadiff_fakes.write_official_ckpt(comfy.base / "models" / "deadiff" / "tiny_beyond.ckpt", official_sd)
    deadiff_fakes.place(comfy.base / "models" / "deadiff", "tiny_beyond_other.safetensors", seed=12)
    g = Graph()
    tiny = g.node("DEADiffTest_TinySD15", seed=0)
    loader = g.node("DEADiffModelLoader", deadiff_name="tiny_beyond.ckpt")
    other = g.node("DEADiffModelLoader", deadiff_name="tiny_beyond_other.safetensors")
    images = g.node("DEADiffTest_ImageFromSeed", seed=21, width=48, height=40, batch_size=2, channels=3)
    kept = {"model": tiny, "deadiff": loader, "other": other, "images": images}
    for name, node in kept.items():
        g.node("DEADiffTest_Keep", value=node, key=f"beyond-{name}")
    out = comfy.run(g.prompt)
    s = {name: out[node.id][0] for name, node in kept.items()}
    encoders = comfy.module("DEADiffStyleEncoder")
    for branch in ("style", "content"):
        s[branch] = [encoders.encode(s["deadiff"], s["images"][i : i + 1], branch) for i in range(2)]
    return s


def apply(comfy, model, deadiff, style_weight=1.0, content_weight=1.0, **optional):
    node = comfy.nodes.NODE_CLASS_MAPPINGS["DEADiffApply"]()
    return node.execute(model, deadiff, style_weight, content_weight, 0.0, 1.0, **optional)[0]


def qkv(batch, queries, width, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, n, width, generator=gen) for n in (queries, TEXT, TEXT))


def projections(sd, key=SITE_KEY):
    return sd[key + "i_to_k.weight"], sd[key + "i_to_v.weight"]


# ------------------------------------------------------------------ regional masks


def test_two_masked_applies_give_two_regional_styles(comfy, setup, official_sd):
    """Left half: text + style A only; right half: text + style B only (each site grid exactly)."""
    h, w = 4, 6
    left = torch.zeros(1, 32, 48)
    left[:, :, :24] = 1.0
    a, b = setup["style"]
    model = apply(comfy, setup["model"], setup["deadiff"], style=a, attn_mask=left)
    model = apply(comfy, model, setup["deadiff"], style=b, attn_mask=1.0 - left)
    i_to_k, i_to_v = projections(official_sd)
    q, k, v = qkv(2, h * w, 32, seed=1)
    out = call(site_patch(model, SITE), q, k, v, (0, 1), [2, 32, h, w])
    columns = torch.arange(h * w) % w
    for i, negative in enumerate((False, True)):
        ta, tb = (torch.zeros_like(t.tokens) if negative else t.tokens for t in (a, b))
        for region, tokens in ((columns < 3, ta), (columns >= 3, tb)):
            expected = ref.site_attention(
                q[i : i + 1, region], k[i : i + 1], v[i : i + 1], [(tokens, 1.0)], i_to_k, i_to_v, HEADS
            )
            torch.testing.assert_close(out[i : i + 1, region], expected, rtol=1e-5, atol=1e-5)


def test_masks_of_any_size_batch_and_range_are_resized_per_site(comfy, setup):
    """A mask with another aspect, out-of-range values and one mask per latent works at every grid."""
    masks = torch.stack([torch.linspace(-1.0, 2.0, 7 * 5).reshape(7, 5), torch.ones(7, 5)])
    model = apply(comfy, setup["model"], setup["deadiff"], style=setup["style"][0], attn_mask=masks)
    patch = site_patch(model, SITE)
    for h, w in ((8, 8), (3, 5), (1, 1)):
        q, k, v = qkv(4, h * w, 32, seed=h)
        out = call(patch, q, k, v, (0, 1), [4, 32, h, w])
        assert out.shape == q.shape and torch.isfinite(out).all()
    q, k, v = qkv(6, 4, 32, seed=9)
    with pytest.raises(ValueError, match="attn_mask: 2 given.*latent batch has 3 images"):
        call(patch, q, k, v, (0, 1), [6, 32, 2, 2])


# ------------------------------------------------------------------ reference batches and mixing


def encode_batch(comfy, setup, branch, mode):
    node = comfy.nodes.NODE_CLASS_MAPPINGS[f"DEADiff{branch.capitalize()}Encoder"]()
    return node.execute(setup["deadiff"], setup["images"], batch_mode=mode)[0]


def test_batch_modes_average_concatenate_and_one_per_latent(comfy, setup):
    a, b = setup["style"]
    concatenated = encode_batch(comfy, setup, "style", "concatenate")
    torch.testing.assert_close(concatenated.for_attention(), torch.cat([a.tokens, b.tokens], dim=1))
    averaged = encode_batch(comfy, setup, "style", "average")
    torch.testing.assert_close(averaged.for_attention(), (a.tokens + b.tokens) / 2)
    per_latent = encode_batch(comfy, setup, "style", "one per latent")
    torch.testing.assert_close(per_latent.for_attention(), torch.cat([a.tokens, b.tokens], dim=0))
    assert concatenated.references == a.references + b.references and len(set(concatenated.references)) == 2


def test_one_reference_per_latent_at_the_site(comfy, setup, official_sd):
    a, b = setup["style"]
    per_latent = encode_batch(comfy, setup, "style", "one per latent")
    model = apply(comfy, setup["model"], setup["deadiff"], style=per_latent)
    i_to_k, i_to_v = projections(official_sd)
    q, k, v = qkv(4, 12, 32, seed=3)
    out = call(site_patch(model, SITE), q, k, v, (1, 0), [4, 32, 3, 4])  # uncond chunk first
    expected = [
        ref.site_attention(q[i : i + 1], k[i : i + 1], v[i : i + 1], [(t, 1.0)], i_to_k, i_to_v, HEADS)
        for i, t in enumerate((torch.zeros_like(a.tokens), torch.zeros_like(b.tokens), a.tokens, b.tokens))
    ]
    torch.testing.assert_close(out, torch.cat(expected), rtol=1e-5, atol=1e-5)
    q, k, v = qkv(6, 12, 32, seed=4)
    with pytest.raises(ValueError, match="tokens: 2 given.*latent batch has 3 images.*batch_mode"):
        call(site_patch(model, SITE), q, k, v, (0, 1), [6, 32, 3, 4])


def test_mix_nodes_weighted_sum_and_concatenate_through_the_executor(comfy, setup, official_sd):
    """Mix Styles in a graph: the weighted sum is the BLIP-Diffusion blend (shares normalised to 1);
    concatenate with weights 1 equals encoding both images as one concatenated batch."""
    g = Graph()
    loader = g.node("DEADiffModelLoader", deadiff_name="tiny_beyond.ckpt")
    images = g.node("DEADiffTest_ImageFromSeed", seed=21, width=48, height=40, batch_size=2, channels=3)
    first = g.node("ImageFromBatch", image=images, batch_index=0, length=1)
    second = g.node("ImageFromBatch", image=images, batch_index=1, length=1)
    style_a = g.node("DEADiffStyleEncoder", deadiff=loader, image=first)
    style_b = g.node("DEADiffStyleEncoder", deadiff=loader, image=second)
    blend = g.node(
        "DEADiffMixStyles", mode="weighted sum", style_1=style_a, weight_1=3.0, style_2=style_b, weight_2=1.0
    )
    concat = g.node(
        "DEADiffMixStyles", mode="concatenate", style_1=style_a, weight_1=1.0, style_2=style_b, weight_2=0.5
    )
    both = g.node("DEADiffStyleEncoder", deadiff=loader, image=images, batch_mode="concatenate")
    for i, node in enumerate((style_a, style_b, blend, concat, both)):
        g.node("DEADiffTest_Keep", value=node, key=f"mix-{i}")
    out = comfy.run(g.prompt)
    a, b, blended, concatenated, batch = (out[n.id][0] for n in (style_a, style_b, blend, concat, both))
    torch.testing.assert_close(blended.for_attention(), 0.75 * a.tokens + 0.25 * b.tokens)
    torch.testing.assert_close(concatenated.for_attention(), torch.cat([a.tokens, 0.5 * b.tokens], dim=1))
    unscaled = comfy.nodes.NODE_CLASS_MAPPINGS["DEADiffMixStyles"]().execute(
        "concatenate", style_1=a, weight_1=1.0, style_2=b, weight_2=1.0
    )[0]
    torch.testing.assert_close(unscaled.for_attention(), batch.for_attention())
    assert blended.references == a.references + b.references


def test_mix_refuses_what_cannot_be_mixed(comfy, setup):
    mix = comfy.nodes.NODE_CLASS_MAPPINGS["DEADiffMixStyles"]()
    a, b = setup["style"]
    with pytest.raises(ValueError, match="weights add up to 0"):
        mix.execute("weighted sum", style_1=a, weight_1=0.0, style_2=b, weight_2=0.0)
    two = encode_batch(comfy, setup, "style", "concatenate")
    with pytest.raises(ValueError, match="same number of tokens.*concatenate"):
        mix.execute("weighted sum", style_1=a, weight_1=1.0, style_2=two, weight_2=1.0)
    other = comfy.module("DEADiffStyleEncoder").encode(setup["other"], setup["images"][:1], "style")
    with pytest.raises(ValueError, match="different DEADiff files.*tiny_beyond.ckpt.*tiny_beyond_other"):
        mix.execute("weighted sum", style_1=a, weight_1=1.0, style_2=other, weight_2=1.0)


# ------------------------------------------------------------------ saved tokens


def test_save_and_load_tokens_through_the_executor(comfy, setup):
    g = Graph()
    loader = g.node("DEADiffModelLoader", deadiff_name="tiny_beyond.ckpt")
    images = g.node("DEADiffTest_ImageFromSeed", seed=21, width=48, height=40, batch_size=2, channels=3)
    style = g.node("DEADiffStyleEncoder", deadiff=loader, image=images, batch_mode="average")
    g.node("DEADiffSaveTokens", tokens=style, filename_prefix="deadiff/beyond_test")
    g.node("DEADiffTest_Keep", value=style, key="saved-style")
    out = comfy.run(g.prompt)
    saved = out[style.id][0]
    files = sorted((comfy.base / "output" / "deadiff").glob("beyond_test_*_.safetensors"))
    assert files, "Save Tokens wrote no file under output/deadiff"
    with safe_open(str(files[-1]), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "deadiff-tokens" and meta["branch"] == "style"
    assert meta["deadiff_weights"] == setup["deadiff"].fingerprint and meta["deadiff_file"] == "tiny_beyond.ckpt"
    assert json.loads(meta["references"]) == list(saved.references) and len(saved.references) == 2
    assert json.loads(meta["dims"]) == {"references": 1, "tokens": 16, "width": 64}

    name = files[-1].name + " [output]"
    tokens_file = comfy.nodes.NODE_CLASS_MAPPINGS["DEADiffLoadStyle"].INPUT_TYPES()["required"]["tokens_file"]
    assert tokens_file[0] == "COMBO" and name in tokens_file[1]["options"]
    g = Graph()
    loader = g.node("DEADiffModelLoader", deadiff_name="tiny_beyond.ckpt")
    loaded = g.node("DEADiffLoadStyle", deadiff=loader, tokens_file=name)
    g.node("DEADiffTest_Keep", value=loaded, key="loaded-style")
    loaded_tokens = comfy.run(g.prompt)[loaded.id][0]
    assert torch.equal(loaded_tokens.tokens, saved.tokens) and loaded_tokens.source == saved.source

    # a file copied to input/deadiff is listed without the tag and loads the same
    target = comfy.base / "input" / "deadiff" / "shared_style.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(files[-1].read_bytes())
    load = comfy.nodes.NODE_CLASS_MAPPINGS["DEADiffLoadStyle"]()
    assert torch.equal(load.execute(setup["deadiff"], "shared_style.safetensors")[0].tokens, saved.tokens)

    with pytest.raises(ValueError, match="another DEADiff file.*tiny_beyond.ckpt.*encode the reference"):
        load.execute(setup["other"], name)
    with pytest.raises(ValueError, match="holds style tokens.*Load Style"):
        comfy.nodes.NODE_CLASS_MAPPINGS["DEADiffLoadContent"]().execute(setup["deadiff"], name)
    with pytest.raises(ValueError, match="outside"):
        load.execute(setup["deadiff"], "../../models/deadiff/tiny_beyond.ckpt")
    not_tokens = comfy.base / "input" / "deadiff" / "model.safetensors"
    deadiff_fakes.write_official_safetensors(not_tokens, deadiff_fakes.make_official_state_dict(seed=1))
    with pytest.raises(ValueError, match="not a saved DEADiff style/content.*Save Tokens"):
        load.execute(setup["deadiff"], "model.safetensors")


# ------------------------------------------------------------------ routing


def test_routing_node_validates_its_text_before_the_prompt_runs(comfy):
    g = Graph()
    routing = g.node("DEADiffRouting", routing="input_1=0.5, nowhere=style")
    g.node("DEADiffTest_Keep", value=routing, key="routing")
    valid = comfy.validate(g.prompt)
    assert not valid[0]
    assert "unknown site or group 'nowhere'" in json.dumps(valid[3])


def test_custom_routing_at_the_sites(comfy, setup, official_sd):
    """content=off: the content sites attend to the text alone; output_... and input_1 follow the text."""
    routing = comfy.nodes.NODE_CLASS_MAPPINGS["DEADiffRouting"]().execute("content=off\ninput_1=content*0.5")[0]
    a = setup["style"][0]
    c = setup["content"][0]
    model = apply(
        comfy,
        setup["model"],
        setup["deadiff"],
        style_weight=0.8,
        content_weight=1.2,
        style=a,
        content=c,
        routing=routing,
    )
    q, k, v = qkv(2, 12, 128, seed=5)
    out = call(site_patch(model, CONTENT_SITE), q, k, v, (0, 1), [2, 128, 3, 4])
    torch.testing.assert_close(out, ref.attention(q, k, v, HEADS), rtol=1e-5, atol=1e-5)
    i_to_k, i_to_v = projections(official_sd)
    q, k, v = qkv(2, 12, 32, seed=6)
    out = call(site_patch(model, SITE), q, k, v, (0, 1), [2, 32, 3, 4])
    for i, tokens in enumerate((c.tokens, torch.zeros_like(c.tokens))):
        expected = ref.site_attention(
            q[i : i + 1], k[i : i + 1], v[i : i + 1], [(tokens, 1.2 * 0.5)], i_to_k, i_to_v, HEADS
        )
        torch.testing.assert_close(out[i : i + 1], expected, rtol=1e-5, atol=1e-5)


def test_empty_routing_is_the_official_split_end_to_end(comfy, setup):
    def graph(with_routing):
        g = txt2img()
        g["dd"] = {"class_type": "DEADiffModelLoader", "inputs": {"deadiff_name": "tiny_beyond.ckpt"}}
        g["img"] = {
            "class_type": "DEADiffTest_ImageFromSeed",
            "inputs": {"seed": 5, "width": 32, "height": 32, "batch_size": 1, "channels": 3},
        }
        g["style"] = {"class_type": "DEADiffStyleEncoder", "inputs": {"deadiff": ["dd", 0], "image": ["img", 0]}}
        g["apply"] = {
            "class_type": "DEADiffApply",
            "inputs": {
                "model": ["model", 0],
                "deadiff": ["dd", 0],
                "style": ["style", 0],
                "style_weight": 1.0,
                "content_weight": 1.0,
                "start_at": 0.0,
                "end_at": 1.0,
            },
        }
        if with_routing is not None:
            g["route"] = {"class_type": "DEADiffRouting", "inputs": {"routing": with_routing}}
            g["apply"]["inputs"]["routing"] = ["route", 0]
        g["sample"]["inputs"]["model"] = ["apply", 0]
        return latent_of(comfy.run(g))

    official = graph(None)
    assert torch.equal(graph(""), official)
    assert not torch.allclose(graph("all=off"), official)
    assert torch.equal(graph("all=off"), latent_of(comfy.run(txt2img()))), "all sites off = plain SD1.5"


# ------------------------------------------------------------------ negative reference


def test_negative_reference_replaces_the_zero_tokens_of_the_negative_pass(comfy, setup, official_sd):
    a, b = setup["style"]
    model = apply(comfy, setup["model"], setup["deadiff"], style_weight=0.7, style=a, negative_style=b)
    i_to_k, i_to_v = projections(official_sd)
    q, k, v = qkv(3, 12, 32, seed=7)
    out = call(site_patch(model, SITE), q, k, v, (0, 1, 0), [3, 32, 3, 4])
    for i, tokens in enumerate((a.tokens, b.tokens, a.tokens)):
        expected = ref.site_attention(q[i : i + 1], k[i : i + 1], v[i : i + 1], [(tokens, 0.7)], i_to_k, i_to_v, HEADS)
        torch.testing.assert_close(out[i : i + 1], expected, rtol=1e-5, atol=1e-5)
    # content unconnected: its negative pass still gets zero tokens, as officially
    q, k, v = qkv(2, 12, 128, seed=8)
    out = call(site_patch(model, CONTENT_SITE), q, k, v, (0, 1), [2, 128, 3, 4])
    zeros = torch.zeros(1, 16, 64)
    c_k, c_v = projections(official_sd, CONTENT_KEY)
    expected = ref.site_attention(q, k, v, [(zeros, 1.0)], c_k, c_v, HEADS)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_negative_reference_needs_as_many_tokens(comfy, setup):
    two = encode_batch(comfy, setup, "style", "concatenate")
    with pytest.raises(ValueError, match="negative_style has 32 tokens but the style side has 16"):
        apply(comfy, setup["model"], setup["deadiff"], style=setup["style"][0], negative_style=two)
    with pytest.raises(ValueError, match="negative_content input got style tokens"):
        apply(comfy, setup["model"], setup["deadiff"], negative_content=setup["style"][0])


def test_tokens_from_another_deadiff_file_are_refused(comfy, setup):
    other = comfy.module("DEADiffStyleEncoder").encode(setup["other"], setup["images"][:1], "style")
    with pytest.raises(ValueError, match="made with another DEADiff file.*tiny_beyond_other.*tiny_beyond.ckpt"):
        apply(comfy, setup["model"], setup["deadiff"], style=other)


def test_one_reference_per_latent_end_to_end(comfy, setup):
    """Latent i of a batch follows reference i alone: with references [A, B], latent 0 is latent 0 of
    the run with [A, A] and latent 1 is latent 1 of the run with [B, B] (same noise, same prompt)."""

    def run(first, second):
        g = txt2img(seed=5)
        g["latent"]["inputs"]["batch_size"] = 2
        g["dd"] = {"class_type": "DEADiffModelLoader", "inputs": {"deadiff_name": "tiny_beyond.ckpt"}}
        g["img"] = {
            "class_type": "DEADiffTest_ImageFromSeed",
            "inputs": {"seed": 21, "width": 48, "height": 40, "batch_size": 2, "channels": 3},
        }
        for name, index in (("a", first), ("b", second)):
            g[name] = {
                "class_type": "ImageFromBatch",
                "inputs": {"image": ["img", 0], "batch_index": index, "length": 1},
            }
        g["refs"] = {"class_type": "ImageBatch", "inputs": {"image1": ["a", 0], "image2": ["b", 0]}}
        g["style"] = {
            "class_type": "DEADiffStyleEncoder",
            "inputs": {"deadiff": ["dd", 0], "image": ["refs", 0], "batch_mode": "one per latent"},
        }
        g["apply"] = {
            "class_type": "DEADiffApply",
            "inputs": {
                "model": ["model", 0],
                "deadiff": ["dd", 0],
                "style": ["style", 0],
                "style_weight": 1.0,
                "content_weight": 1.0,
                "start_at": 0.0,
                "end_at": 1.0,
            },
        }
        g["sample"]["inputs"]["model"] = ["apply", 0]
        return latent_of(comfy.run(g))

    mixed, only_a, only_b = run(0, 1), run(0, 0), run(1, 1)
    torch.testing.assert_close(mixed[0], only_a[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed[1], only_b[1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(only_a[1], only_b[1], atol=1e-4), "the two references must differ"
