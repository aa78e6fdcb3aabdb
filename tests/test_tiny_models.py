"""The test-only node pack (tests/comfy_test_pack): tiny random models made of ComfyUI's own classes.

Everything runs through the real ComfyUI booted by the `comfy` fixture: its validator, executor,
samplers, model patcher, LoRA loader and ControlNet code. Latents are 8x8 (64x64 images) and
samplers take 2-3 steps, so the whole file takes seconds.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

# the 16 SD1.5 cross-attention sites and their width multiplier (x model_channels)
SD15_ATTN2_SITES = {
    **{f"input_blocks.{i}": m for i, m in ((1, 1), (2, 1), (4, 2), (5, 2), (7, 4), (8, 4))},
    "middle_block": 4,
    **{f"output_blocks.{i}": m for i, m in ((3, 4), (4, 4), (5, 4), (6, 2), (7, 2), (8, 2), (9, 1), (10, 1), (11, 1))},
}


def txt2img(
    seed=0,
    positive="a red fox in the snow",
    negative="blurry",
    steps=3,
    cfg=4.0,
    model_seed=0,
    capture_key="latent",
    save_prefix=None,
):
    """API-format txt2img graph on the tiny SD1.5: node ids model, pos, neg, latent, sample, decode,
    capture (the output node that makes ComfyUI run the rest) and, with `save_prefix`, save."""
    g = {
        "model": {"class_type": "DEADiffTest_TinySD15", "inputs": {"seed": model_seed}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"text": positive, "clip": ["model", 1]}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["model", 1]}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "sample": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["model", 0],
                "seed": seed,
                "steps": steps,
                "cfg": cfg,
                "sampler_name": "euler",
                "scheduler": "normal",
                "positive": ["pos", 0],
                "negative": ["neg", 0],
                "latent_image": ["latent", 0],
                "denoise": 1.0,
            },
        },
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["model", 2]}},
    }
    g["capture"] = {"class_type": "DEADiffTest_CaptureLatent", "inputs": {"samples": ["sample", 0], "key": capture_key}}
    if save_prefix is not None:
        g["save"] = {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": save_prefix}}
    return g


def keep(node_id, output=0, key="kept", **node):
    """A graph fragment: `node` (class_type/inputs) plus a DEADiffTest_Keep output node reading it."""
    return {
        node_id: node,
        f"keep_{node_id}_{output}": {
            "class_type": "DEADiffTest_Keep",
            "inputs": {"value": [node_id, output], "key": key},
        },
    }


def latent_of(results):
    return results["sample"][0]["samples"]


@pytest.fixture(scope="module")
def pack(comfy):
    return comfy.module("DEADiffTest_TinySD15")


@pytest.fixture(scope="module")
def baseline(comfy):
    """Latent of the default txt2img graph (run once per module)."""
    return latent_of(comfy.run(txt2img()))


def test_pack_nodes_are_registered_with_tooltips_and_descriptions(comfy):
    ids = [
        "DEADiffTest_TinySD15",
        "DEADiffTest_TinySDXL",
        "DEADiffTest_TinyControlNet",
        "DEADiffTest_SaveTinyLora",
        "DEADiffTest_ImageFromSeed",
        "DEADiffTest_CaptureLatent",
        "DEADiffTest_CaptureImage",
        "DEADiffTest_Keep",
    ]
    for node_id in ids:
        cls = comfy.nodes.NODE_CLASS_MAPPINGS[node_id]
        assert cls.CATEGORY == "DEADiff/testing"
        assert cls.DESCRIPTION.strip()
        spec = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, entry in spec.get(section, {}).items():
                assert entry[1].get("tooltip"), f"{node_id}.{name} has no tooltip"


def test_txt2img_through_the_real_executor_saves_a_png(comfy, pack):
    import folder_paths

    prefix = "tiny_models_txt2img"
    results = comfy.run(txt2img(capture_key="txt2img", save_prefix=prefix))
    latent = latent_of(results)
    assert latent.shape == (1, 4, 8, 8)
    assert torch.isfinite(latent).all()
    image = results["decode"][0]
    assert image.shape == (1, 64, 64, 3)
    assert torch.isfinite(image).all()
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert image.std() > 0.02, "decoded image is flat: the random VAE is degenerate"
    saturated = ((image == 0) | (image == 1)).float().mean()
    assert saturated < 0.5, f"{saturated:.0%} of the pixels are clipped"
    pngs = [f for f in os.listdir(folder_paths.get_output_directory()) if f.startswith(prefix) and f.endswith(".png")]
    assert pngs, "SaveImage wrote no PNG"
    # the capture node kept the same latent, and its UI summary matches
    assert torch.equal(pack.CAPTURED["txt2img"], latent)
    ui = pack.DEADiffTest_CaptureLatent().capture({"samples": latent}, "txt2img")["ui"]
    assert ui["shape"] == [1, 4, 8, 8]
    assert math.isclose(ui["sum"][0], float(latent.double().sum()))


def test_same_seed_gives_identical_latents(comfy, baseline):
    again = latent_of(comfy.run(txt2img()))
    assert torch.equal(again, baseline)


def test_prompt_changes_the_result(comfy, baseline):
    other = latent_of(comfy.run(txt2img(positive="an oil painting of a lighthouse at dusk")))
    diff = (other - baseline).abs().mean() / baseline.abs().mean()
    assert diff > 1e-2, "the UNet ignores the text context"


def test_noise_seed_and_model_seed_change_the_result(comfy, baseline):
    assert not torch.equal(latent_of(comfy.run(txt2img(seed=1))), baseline)
    assert not torch.equal(latent_of(comfy.run(txt2img(model_seed=1))), baseline)


def test_controlnet_changes_the_result(comfy, baseline):
    def graph(strength):
        g = txt2img()
        g["cnet"] = {"class_type": "DEADiffTest_TinyControlNet", "inputs": {"seed": 0}}
        g["hint"] = {
            "class_type": "DEADiffTest_ImageFromSeed",
            "inputs": {"seed": 5, "width": 64, "height": 64, "batch_size": 1, "channels": 3},
        }
        g["apply"] = {
            "class_type": "ControlNetApplyAdvanced",
            "inputs": {
                "positive": ["pos", 0],
                "negative": ["neg", 0],
                "control_net": ["cnet", 0],
                "image": ["hint", 0],
                "strength": strength,
                "start_percent": 0.0,
                "end_percent": 1.0,
            },
        }
        g["sample"]["inputs"]["positive"] = ["apply", 0]
        g["sample"]["inputs"]["negative"] = ["apply", 1]
        return g

    controlled = latent_of(comfy.run(graph(1.0)))
    assert torch.isfinite(controlled).all()
    assert (controlled - baseline).abs().mean() / baseline.abs().mean() > 1e-2
    # a different hint gives a different result too (the hint image reaches the control model)
    g = graph(1.0)
    g["hint"]["inputs"]["seed"] = 6
    assert not torch.equal(latent_of(comfy.run(g)), controlled)


def test_lora_from_models_loras_changes_the_result_and_leaves_the_base_model_alone(comfy, pack, baseline):
    import folder_paths

    name = "deadiff_tiny_test_lora.safetensors"
    pack.write_tiny_lora(os.path.join(folder_paths.get_folder_paths("loras")[0], name), seed=0)

    def graph(strength):
        g = txt2img()
        g["lora"] = {
            "class_type": "LoraLoaderModelOnly",
            "inputs": {"model": ["model", 0], "lora_name": name, "strength_model": strength},
        }
        g["sample"]["inputs"]["model"] = ["lora", 0]
        return g

    patched = latent_of(comfy.run(graph(1.0)))
    assert torch.isfinite(patched).all()
    assert (patched - baseline).abs().mean() / baseline.abs().mean() > 1e-2
    assert torch.equal(latent_of(comfy.run(graph(0.0))), baseline)
    # the patch lived on a clone: the plain graph afterwards is unchanged
    assert torch.equal(latent_of(comfy.run(txt2img())), baseline)
    # ComfyUI unpatches lazily (the shared weights hold the LoRA until another patcher loads the
    # model); once everything is unloaded the cached model equals a freshly built one again
    import comfy.model_management as model_management

    model_management.unload_all_models()
    cached = pack.tiny_sd15(0)[0].model.state_dict()
    fresh = pack.build_sd15_model(0).model.state_dict()
    assert all(torch.equal(cached[k], fresh[k]) for k in fresh)


def test_every_lora_key_maps_onto_the_tiny_unet(comfy, pack):
    import comfy.lora as comfy_lora

    model, _, _ = pack.tiny_sd15(0)
    lora = pack.tiny_lora_state_dict(seed=0)
    key_map = comfy_lora.model_lora_keys_unet(model.model, {})
    patches = comfy_lora.load_lora(lora, key_map, log_missing=False)
    n_targets = len([k for k in lora if k.endswith(".lora_up.weight")])
    assert n_targets == 16 * 4 + 1
    assert len(patches) == n_targets
    assert "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight" in patches
    assert "diffusion_model.input_blocks.1.0.in_layers.2.weight" in patches


def test_tiny_sd15_has_the_sd15_attn2_sites(comfy, pack):
    import comfy.latent_formats as latent_formats
    import comfy.model_base as model_base
    import comfy.model_patcher as model_patcher
    import comfy.supported_models as supported_models

    results = comfy.run(keep("m", class_type="DEADiffTest_TinySD15", inputs={"seed": 0}))
    model = results["m"][0]
    assert isinstance(model, model_patcher.ModelPatcher)
    assert type(model.model) is model_base.BaseModel
    assert type(model.model.model_config) is supported_models.SD15
    assert model.model.model_type == model_base.ModelType.EPS
    assert isinstance(model.model.latent_format, latent_formats.SD15)
    assert model.model.latent_format.latent_channels == 4
    found = {}
    for name, module in model.model.diffusion_model.named_modules():
        if name.endswith(".attn2"):
            block = name.split(".1.transformer_blocks.")[0]
            assert name == f"{block}.1.transformer_blocks.0.attn2", name
            found[block] = module
    assert set(found) == set(SD15_ATTN2_SITES)
    for block, mult in SD15_ATTN2_SITES.items():
        attn2 = found[block]
        assert attn2.to_q.in_features == 32 * mult, block
        assert attn2.to_k.in_features == attn2.to_v.in_features == 64, block
        assert attn2.heads == 8
    # ComfyUI's own detection reads the state dict as an SD1.5-topology UNet
    import comfy.model_detection as model_detection

    detected = model_detection.detect_unet_config(model.model.state_dict(), "diffusion_model.")
    expected = pack.sd15_unet_config(64, 32)
    for key in (
        "num_res_blocks",
        "channel_mult",
        "transformer_depth",
        "transformer_depth_middle",
        "transformer_depth_output",
        "context_dim",
        "model_channels",
        "use_linear_in_transformer",
        "in_channels",
        "adm_in_channels",
    ):
        assert detected[key] == expected[key], key


def test_clip_and_dims_follow_the_inputs(comfy):
    g = {
        "m": {"class_type": "DEADiffTest_TinySD15", "inputs": {"seed": 3, "context_dim": 96, "model_channels": 64}},
        **keep("c", class_type="CLIPTextEncode", inputs={"text": "a cat", "clip": ["m", 1]}),
    }
    results = comfy.run(g)
    cond = results["c"][0]
    assert cond[0][0].shape == (1, 77, 96)
    assert cond[0][1]["pooled_output"].shape == (1, 96)
    unet = results["m"][0].model.diffusion_model
    assert unet.input_blocks[1][1].transformer_blocks[0].attn2.to_k.in_features == 96
    assert unet.input_blocks[1][1].transformer_blocks[0].attn2.to_q.in_features == 64
    assert unet.middle_block[1].transformer_blocks[0].attn2.to_q.in_features == 256


def test_models_are_cached_but_handed_out_as_clones(comfy):
    def graph():
        g = keep("m", 0, key="model", class_type="DEADiffTest_TinySD15", inputs={"seed": 0})
        g["keep_clip"] = {"class_type": "DEADiffTest_Keep", "inputs": {"value": ["m", 1], "key": "clip"}}
        g["keep_vae"] = {"class_type": "DEADiffTest_Keep", "inputs": {"value": ["m", 2], "key": "vae"}}
        return g

    a = comfy.run(graph())["m"]
    b = comfy.run(graph())["m"]
    assert a[0] is not b[0] and a[0].model is b[0].model  # MODEL: clones of one cached patcher
    assert a[1] is not b[1] and a[1].cond_stage_model is b[1].cond_stage_model
    assert a[2] is b[2]  # VAE: shared, nothing patches it


def test_same_seed_builds_bit_identical_weights(comfy, pack):
    first = pack.build_sd15_model(seed=11).model.state_dict()
    second = pack.build_sd15_model(seed=11).model.state_dict()
    other = pack.build_sd15_model(seed=12).model.state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)
    assert all(torch.isfinite(v).all() for v in first.values() if v.is_floating_point())
    decoder = "taesd_decoder.1.weight"
    assert torch.equal(pack.taesd_state_dict(4)[decoder], pack.taesd_state_dict(4)[decoder])


def test_tiny_sdxl_is_a_real_sdxl_model(comfy):
    import comfy.model_base as model_base
    import comfy.model_patcher as model_patcher
    import comfy.supported_models as supported_models

    model = comfy.run(keep("x", class_type="DEADiffTest_TinySDXL", inputs={"seed": 0}))["x"][0]
    assert isinstance(model, model_patcher.ModelPatcher)
    assert type(model.model.model_config) is supported_models.SDXL
    assert type(model.model.model_config).__name__ == "SDXL"
    assert isinstance(model.model, model_base.SDXL)
    assert model.model.adm_channels == 64 + 6 * 256
    assert not isinstance(model.model.model_config, supported_models.SD15)


def test_tiny_sdxl_samples_with_the_tiny_clip(comfy):
    g = txt2img(steps=2)
    g["xl"] = {"class_type": "DEADiffTest_TinySDXL", "inputs": {"seed": 0}}
    g["sample"]["inputs"]["model"] = ["xl", 0]
    latent = latent_of(comfy.run(g))
    assert latent.shape == (1, 4, 8, 8) and torch.isfinite(latent).all()


def test_image_from_seed(comfy, pack):
    g = {
        f"i{c}": {
            "class_type": "DEADiffTest_ImageFromSeed",
            "inputs": {"seed": 2, "width": 48, "height": 32, "batch_size": 2, "channels": c},
        }
        for c in (1, 3, 4)
    }
    g["cap"] = {"class_type": "DEADiffTest_CaptureImage", "inputs": {"images": ["i3", 0], "key": "img"}}
    g["cap1"] = {"class_type": "DEADiffTest_CaptureImage", "inputs": {"images": ["i1", 0], "key": "img1"}}
    g["cap4"] = {"class_type": "DEADiffTest_CaptureImage", "inputs": {"images": ["i4", 0], "key": "img4"}}
    results = comfy.run(g)
    for c in (1, 3, 4):
        image = results[f"i{c}"][0]
        assert image.shape == (2, 32, 48, c)
        assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0.05
    assert torch.equal(pack.CAPTURED["img"], results["i3"][0])
    assert torch.equal(pack.image_from_seed(2, 48, 32, 2, 3), results["i3"][0])
    assert not torch.equal(pack.image_from_seed(3, 48, 32, 2, 3), results["i3"][0])
    with pytest.raises(ValueError):
        pack.image_from_seed(0, 8, 8, 1, 2)


def test_vae_encode_decode_round_trip_shapes(comfy):
    g = {
        "m": {"class_type": "DEADiffTest_TinySD15", "inputs": {"seed": 0}},
        "img": {
            "class_type": "DEADiffTest_ImageFromSeed",
            "inputs": {"seed": 1, "width": 64, "height": 64, "batch_size": 1, "channels": 3},
        },
        "enc": {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["m", 2]}},
        **keep("dec", class_type="VAEDecode", inputs={"samples": ["enc", 0], "vae": ["m", 2]}),
    }
    results = comfy.run(g)
    latent = results["enc"][0]["samples"]
    assert latent.shape == (1, 4, 8, 8)
    assert 1.0 < latent.std() < 30.0, "raw latents should be SD-VAE-sized (std ~ 1/0.18215)"
    assert results["dec"][0].shape == (1, 64, 64, 3)


@pytest.mark.server
def test_real_server_lists_the_nodes_and_reports_capture_ui_in_history(comfy_server):
    info = comfy_server.get("/object_info/DEADiffTest_TinySD15")["DEADiffTest_TinySD15"]
    assert info["category"] == "DEADiff/testing"
    assert info["output"] == ["MODEL", "CLIP", "VAE"]
    assert "DEADiffTest_Keep" in comfy_server.get("/object_info")
    entry = comfy_server.run(txt2img(steps=2, capture_key="server"))
    ui = entry["outputs"]["capture"]
    assert ui["key"] == ["server"]
    assert ui["shape"] == [1, 4, 8, 8]
    assert math.isfinite(ui["sum"][0])
