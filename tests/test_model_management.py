"""The `deadiff` model folder and ComfyUI's memory management of DEADiff's weights."""

from __future__ import annotations

import sys
from pathlib import Path

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


def run_style_graph(comfy, deadiff_name):
    """(deadiff, tokens, patched MODEL, sampled latent, the reference images) of a 2-step style transfer."""
    g = Graph()
    tiny = g.node("DEADiffTest_TinySD15", seed=0)
    pos = g.node("CLIPTextEncode", clip=tiny[1], text="a boat")
    loader = g.node("DEADiffModelLoader", deadiff_name=deadiff_name)
    image = g.node("DEADiffTest_ImageFromSeed", seed=1, width=64, height=64, batch_size=2, channels=4)
    style = g.node("DEADiffStyleEncoder", deadiff=loader, image=image)
    apply = g.node(
        "DEADiffApply",
        model=tiny[0],
        deadiff=loader,
        style_weight=1.0,
        content_weight=1.0,
        start_at=0.0,
        end_at=1.0,
        style=style,
    )
    latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=1)
    sample = g.node(
        "KSampler",
        model=apply,
        seed=1,
        steps=2,
        cfg=8.0,
        sampler_name="euler",
        scheduler="normal",
        positive=pos,
        negative=pos,
        latent_image=latent,
        denoise=1.0,
    )
    g.node("DEADiffTest_CaptureLatent", samples=sample, key="mm")
    for node in (loader, style, apply, image):
        g.node("DEADiffTest_Keep", value=node, key="mm-kept")
    out = comfy.run(g.prompt)
    return out[loader.id][0], out[style.id][0], out[apply.id][0], out[sample.id][0]["samples"], out[image.id][0]


def test_comfyui_owns_the_encoders_and_projections_and_frees_them_on_demand(comfy, deadiff_name):
    """Like ComfyUI's own CLIP vision: the encoders stay in ComfyUI's loaded models after encoding
    (nothing of ours unloads them), the projections load with the UNet through models(), and when a
    model needs the memory, ComfyUI's free_memory evicts both; the next encode loads them again."""
    import comfy.model_management as mm

    deadiff, tokens, patched, samples, images = run_style_graph(comfy, deadiff_name)
    assert tokens.tokens.shape == (2, 16, 64), "one set of 16 tokens per reference image, no averaging"
    assert tokens.tokens.device == mm.intermediate_device()
    assert torch.isfinite(samples).all()
    loaded = mm.loaded_models()
    assert deadiff.encoder_patcher in loaded, "ComfyUI keeps the encoders until it needs the memory"
    assert deadiff.site_projections_patcher in loaded, "the projections are loaded with the UNet through models()"
    assert deadiff.site_projections_patcher in patched.model_patches_models()

    mm.free_memory(1e30, deadiff.encoder_patcher.load_device)  # what ComfyUI runs when a model needs the space
    loaded = mm.loaded_models()
    assert deadiff.encoder_patcher not in loaded and deadiff.site_projections_patcher not in loaded
    again = nodes_module(comfy, "encoders").encode(deadiff, images, "style")
    assert deadiff.encoder_patcher in mm.loaded_models(), "the next encode loads the encoders again"
    assert torch.equal(again.tokens, tokens.tokens)


def test_every_weight_sits_in_comfyuis_cast_on_call_layers(comfy, deadiff_name):
    """The encoders and the 32 site projections are built from comfy.ops layers, which bring their
    weights to the input when called (the layers DynamicVRAM streams), and K/V are computed through them."""
    import comfy.ops as ops

    managed = nodes_module(comfy, "managed")
    deadiff = managed.ManagedDEADiff.from_file(str(comfy.base / "models" / "deadiff" / deadiff_name))
    layer_types = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.LayerNorm, torch.nn.Embedding)
    layers = [(name, m) for name, m in deadiff.model.named_modules() if isinstance(m, layer_types)]
    assert len(layers) > 64
    plain = [name for name, m in layers if not isinstance(m, ops.CastWeightBiasOp) or not m.comfy_cast_weights]
    assert plain == [], f"layers outside ComfyUI's cast-on-call ops: {plain[:5]}"
    owned = {id(p) for _, m in layers for p in m.parameters(recurse=False)}
    loose = [n for n, p in deadiff.model.named_parameters() if id(p) not in owned]
    # what is not in a layer: learned tokens/embeddings a module adds itself (ComfyUI loads those as plain weights)
    assert all(n.endswith(("query_tokens", "class_embedding")) for n in loose), loose
    i_to_k, i_to_v = deadiff.model.site_projections.layers("output_11")
    assert i_to_k is deadiff.model.site_projections.sites["output_11"].i_to_k
    assert isinstance(i_to_k, ops.manual_cast.Linear) and isinstance(i_to_v, ops.manual_cast.Linear)


def test_patchers_are_the_class_comfyui_prefers(comfy, deadiff_name, monkeypatch):
    """ComfyUI 0.33 builds its models with comfy.model_patcher.CoreModelPatcher (the DynamicVRAM patcher
    when that is on); the pack uses whatever that name holds, and ModelPatcher where it does not exist."""
    import comfy.model_patcher as model_patcher

    managed = nodes_module(comfy, "managed")
    path = str(comfy.base / "models" / "deadiff" / deadiff_name)
    expected = getattr(model_patcher, "CoreModelPatcher", model_patcher.ModelPatcher)
    deadiff = managed.ManagedDEADiff.from_file(path)
    assert type(deadiff.encoder_patcher) is expected and type(deadiff.site_projections_patcher) is expected

    class Preferred(model_patcher.ModelPatcher):
        pass

    monkeypatch.setattr(model_patcher, "CoreModelPatcher", Preferred, raising=False)
    deadiff = managed.ManagedDEADiff.from_file(path)
    assert type(deadiff.encoder_patcher) is Preferred and type(deadiff.site_projections_patcher) is Preferred


def test_no_manual_unloading_in_the_pack(comfy):
    """ComfyUI frees models on demand; the pack never edits its list of loaded models."""
    pack_dir = Path(comfy.module("DEADiffApply").__file__).resolve().parent.parent
    for source in list((pack_dir / "nodes").glob("*.py")) + list((pack_dir / "deadiff_core").glob("*.py")):
        text = source.read_text(encoding="utf-8")
        assert "current_loaded_models" not in text and "model_unload" not in text, source.name
