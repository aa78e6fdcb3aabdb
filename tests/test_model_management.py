"""The `deadiff` model folder and ComfyUI's memory management of DEADiff's weights."""
from __future__ import annotations

import sys

import pytest
import torch

import deadiff_fakes
from graphs import Graph


@pytest.fixture(scope="module")
def deadiff_name(comfy):
    return deadiff_fakes.place(comfy.base / "models" / "deadiff", "tiny_mm.safetensors", seed=6)


def nodes_module(comfy, name):
    """A module of the pack's nodes/ package, as ComfyUI loaded it."""
    return sys.modules[comfy.module("DEADiffApply").__package__ + "." + name]


def test_deadiff_folder_is_registered_with_its_extensions(comfy, deadiff_name):
    import folder_paths

    paths, extensions = folder_paths.folder_names_and_paths["deadiff"]
    assert paths[0] == str(comfy.base / "models" / "deadiff")
    assert {".ckpt", ".safetensors"} <= set(extensions)
    assert deadiff_name in folder_paths.get_filename_list("deadiff")


@pytest.mark.parametrize("yaml_first", [False, True])
def test_extra_model_paths_yaml_adds_deadiff_folders(comfy, tmp_path, yaml_first):
    """ComfyUI reads extra_model_paths.yaml before custom nodes load (yaml_first) and can also add
    paths later; either way the extra folder is listed and filtered by our extensions."""
    import folder_paths
    import utils.extra_config

    extra = tmp_path / "shared_models" / "deadiff_extra"
    extra.mkdir(parents=True)
    (extra / "from_yaml.ckpt").write_bytes(b"x")
    (extra / "notes.txt").write_text("not a model")
    config = tmp_path / "extra_model_paths.yaml"
    config.write_text(f"shared:\n    base_path: {tmp_path / 'shared_models'}\n    deadiff: deadiff_extra\n")
    saved = folder_paths.folder_names_and_paths["deadiff"]
    try:
        if yaml_first:
            del folder_paths.folder_names_and_paths["deadiff"]
            utils.extra_config.load_extra_path_config(str(config))
            nodes_module(comfy, "model_folder").register_model_folder()
        else:
            utils.extra_config.load_extra_path_config(str(config))
        folder_paths.filename_list_cache.clear()
        paths = folder_paths.get_folder_paths("deadiff")
        assert paths[0] == str(comfy.base / "models" / "deadiff")
        assert str(extra) in paths
        names = folder_paths.get_filename_list("deadiff")
        assert "from_yaml.ckpt" in names and "notes.txt" not in names
    finally:
        folder_paths.folder_names_and_paths["deadiff"] = saved
        folder_paths.filename_list_cache.clear()


def test_encoders_are_offloaded_and_projections_travel_with_the_unet(comfy, deadiff_name):
    import comfy.model_management as mm

    g = Graph()
    tiny = g.node("DEADiffTest_TinySD15", seed=0)
    pos = g.node("CLIPTextEncode", clip=tiny[1], text="a boat")
    loader = g.node("DEADiffModelLoader", deadiff_name=deadiff_name)
    image = g.node("DEADiffTest_ImageFromSeed", seed=1, width=64, height=64, batch_size=2, channels=4)
    style = g.node("DEADiffStyleEncoder", deadiff=loader, image=image)
    apply = g.node("DEADiffApply", model=tiny[0], deadiff=loader, style_weight=1.0, content_weight=1.0,
                   start_at=0.0, end_at=1.0, style=style)
    latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=1)
    sample = g.node("KSampler", model=apply, seed=1, steps=2, cfg=8.0, sampler_name="euler",
                    scheduler="normal", positive=pos, negative=pos, latent_image=latent, denoise=1.0)
    g.node("DEADiffTest_CaptureLatent", samples=sample, key="mm")
    for node in (loader, style, apply):
        g.node("DEADiffTest_Keep", value=node, key="mm-kept")
    out = comfy.run(g.prompt)
    deadiff = out[loader.id][0]
    tokens = out[style.id][0]
    assert tokens.tokens.shape == (2, 16, 64), "one set of 16 tokens per reference image, no averaging"
    assert tokens.tokens.device == mm.intermediate_device()
    loaded = mm.loaded_models()
    assert deadiff.encoder_patcher not in loaded, "the encoders must be offloaded after encoding"
    assert deadiff.injection_patcher in loaded, "the projections are loaded with the UNet through models()"
    patched = out[apply.id][0]
    assert deadiff.injection_patcher in patched.model_patches_models()
    assert torch.isfinite(out[sample.id][0]["samples"]).all()
