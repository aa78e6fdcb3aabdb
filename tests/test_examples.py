"""The shareable example workflows (example_workflows/*.json), checked against the real ComfyUI.

Each example is read in the front end's UI format, converted to an API prompt with the running
ComfyUI's node definitions (tests/ui_to_api.py, over deadiff_runner/workflow_api.py), validated by
ComfyUI's own `validate_prompt` with its ORIGINAL values (official settings, the real file names:
a tiny DEADiff file is written as `deadiff_v1.ckpt`, and the SD1.5 checkpoint and the ControlNet are
name-only placeholders that are never loaded), then run end to end with the checkpoint and ControlNet
swapped for the test pack's tiny models, at 64x64 and 2 steps. Every DEADiff Apply node in an example
must change its picture.

The saved-style pair works as a user runs it: the tokens file deadiff_load_saved_style names is the
one deadiff_saved_style writes, made by running that example in the same ComfyUI with the same
DEADiff file the load example's loader loads (a saved style is refused for any other).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import deadiff_fakes
from conftest import GraphError
from ui_to_api import MissingNodeTypes, WorkflowError, comfy_node_info, to_api, widget_layout

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "example_workflows"
NAMES = (
    "deadiff_style_transfer",
    "deadiff_content_transfer",
    "deadiff_style_and_content",
    "deadiff_style_mixing",
    "deadiff_controlnet",
    "deadiff_lora",
    "deadiff_regional_styles",
    "deadiff_style_blend",
    "deadiff_saved_style",
    "deadiff_load_saved_style",
    "deadiff_reference_region",
)
SAVED, LOAD_SAVED = "deadiff_saved_style", "deadiff_load_saved_style"
REGION = "deadiff_reference_region"
SD15 = "v1-5-pruned-emaonly.safetensors"
DEADIFF = "deadiff_v1.ckpt"
CANNY = "control_v11p_sd15_canny.pth"
# docs/design.md §6, written out here rather than imported, so a change to the examples cannot pass by itself
OFFICIAL_NEGATIVE = (
    "over-exposure, under-exposure, saturated, duplicate, out of frame, lowres, cropped, worst "
    "quality, low quality, jpeg artifacts, morbid, mutilated, out of frame, ugly, bad anatomy, bad "
    "proportions, deformed, blurry, duplicate"
)
PACK_TYPES = {
    "DEADiffModelLoader",
    "DEADiffStyleEncoder",
    "DEADiffContentEncoder",
    "DEADiffApply",
    "DEADiffMixStyles",
    "DEADiffMixContents",
    "DEADiffSaveTokens",
    "DEADiffLoadStyle",
    "DEADiffLoadContent",
    "DEADiffRouting",
}
OUTPUT_TYPES = ("SaveImage", "DEADiffSaveTokens", "PreviewImage")
TEST_SUBSTITUTES = {"CheckpointLoaderSimple": "DEADiffTest_TinySD15", "ControlNetLoader": "DEADiffTest_TinyControlNet"}


def load(name: str) -> dict:
    return json.loads((EXAMPLES / f"{name}.json").read_text(encoding="utf-8"))


def of_type(prompt: dict, class_type: str) -> list[str]:
    return sorted((nid for nid, n in prompt.items() if n["class_type"] == class_type), key=int)


def source(prompt: dict, node_id: str, name: str):
    value = prompt[node_id]["inputs"].get(name)
    assert isinstance(value, list), f"{prompt[node_id]['class_type']} {node_id}.{name} is not linked: {value!r}"
    return value[0], value[1]


def ui_widget_values(workflow: dict, class_type: str) -> list:
    return [n["widgets_values"] for n in workflow["nodes"] if n["type"] == class_type]


def place_deadiff_and_inputs(comfy) -> set:
    """The DEADiff file (tiny, synthetic) and the reference images the examples name, in ComfyUI's
    folders; returns the image names."""
    deadiff_fakes.place(comfy.base / "models" / "deadiff", DEADIFF, seed=0)
    tiny = comfy.module("DEADiffTest_TinySD15")
    images = set()
    for name in NAMES:
        images.update(values[0] for values in ui_widget_values(load(name), "LoadImage"))
    for seed, name in enumerate(sorted(images)):
        path = comfy.base / "input" / name
        if not path.exists():  # a non-square image of its own per name, so references differ
            pixels = tiny.image_from_seed(seed + 100, 96, 80)[0]
            Image.fromarray((pixels.numpy() * 255).round().astype("uint8")).save(path)
    return images


def tokens_file_path(comfy, combo_value: str) -> Path:
    """Where DEADiff Load Style / Load Content looks for a tokens_file value (' [output]': output/deadiff)
    in the ComfyUI base folder `comfy.base` (the in-process ComfyUI or the server)."""
    if combo_value.endswith(" [output]"):
        return comfy.base / "output" / "deadiff" / combo_value[: -len(" [output]")]
    return comfy.base / "input" / "deadiff" / combo_value


def make_saved_style(comfy) -> Path:
    """Run deadiff_saved_style (test edition) in this ComfyUI, as a user does before opening
    deadiff_load_saved_style, and return the tokens file the load example names. Earlier files of
    that prefix are removed first, so the run writes counter 00001, the name the load example uses."""
    place_deadiff_and_inputs(comfy)
    (prefix,) = [values[0] for values in ui_widget_values(load(SAVED), "DEADiffSaveTokens")]
    (wanted,) = [values[0] for values in ui_widget_values(load(LOAD_SAVED), "DEADiffLoadStyle")]
    folder = comfy.base / "output" / Path(prefix).parent
    for old in folder.glob(f"{Path(prefix).name}_*.safetensors"):
        old.unlink()
    comfy.run(small(to_api(comfy, load(SAVED)), "saved-style-for-load"))
    path = tokens_file_path(comfy, wanted)
    assert path.is_file(), f"{SAVED} did not write {path} (found {sorted(p.name for p in folder.glob('*'))})"
    return path


@pytest.fixture(scope="module")
def saved_style_tokens(comfy, example_files):
    """The tokens file deadiff_load_saved_style loads, written by running deadiff_saved_style."""
    return make_saved_style(comfy)


def files_for(request, name: str) -> None:
    """What an example needs beyond example_files: the load example, the saved style it names."""
    if name == LOAD_SAVED:
        request.getfixturevalue("saved_style_tokens")


@pytest.fixture(scope="module")
def example_files(comfy):
    """The files the examples name, where ComfyUI looks for them."""
    models = comfy.base / "models"
    images = place_deadiff_and_inputs(comfy)
    placeholders = []
    for folder, name in (("checkpoints", SD15), ("controlnet", CANNY)):
        path = models / folder / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"name-only placeholder for validate_prompt; the tests never load it")
            placeholders.append(path)
    tiny = comfy.module("DEADiffTest_TinySD15")
    for name in NAMES:
        for values in ui_widget_values(load(name), "LoraLoader"):
            lora = models / "loras" / values[0]
            if not lora.exists():
                tiny.write_tiny_lora(str(lora), seed=3)
    yield images
    for path in placeholders:
        path.unlink()


# --------------------------------------------------------------------------------------------------
# the files and the UI format


def test_every_example_is_there_with_a_thumbnail():
    assert sorted(p.stem for p in EXAMPLES.glob("*.json")) == sorted(NAMES)
    for name in NAMES:
        # the front end asks for <name>.jpg next to a custom node pack's example workflow
        with Image.open(EXAMPLES / f"{name}.jpg") as thumb:
            assert thumb.format == "JPEG" and thumb.size[0] >= 256 and thumb.size[1] >= 192
            assert len(set(thumb.convert("L").getdata())) > 20, "thumbnail is blank"


@pytest.mark.parametrize("name", NAMES)
def test_ui_format_is_consistent(name):
    workflow = load(name)
    assert workflow["version"] == 0.4
    nodes = {n["id"]: n for n in workflow["nodes"]}
    assert len(nodes) == len(workflow["nodes"]), "duplicate node ids"
    links = {link[0]: link for link in workflow["links"]}
    assert len(links) == len(workflow["links"]), "duplicate link ids"
    assert workflow["last_node_id"] >= max(nodes) and workflow["last_link_id"] >= max(links)
    for link_id, origin, origin_slot, target, target_slot, kind in workflow["links"]:
        out = nodes[origin]["outputs"][origin_slot]
        into = nodes[target]["inputs"][target_slot]
        # the front end types a link as its input (an input of several types, "A,B", accepts each)
        assert link_id in out["links"] and out["type"] in kind.split(","), (name, link_id)
        assert into["link"] == link_id and into["type"] == kind, (name, link_id)
    for node in workflow["nodes"]:
        for slot in node["inputs"]:
            assert slot["link"] is None or slot["link"] in links, (name, node["id"], slot)
        for slot in node["outputs"]:
            assert all(link in links for link in slot["links"] or []), (name, node["id"], slot)
        assert len(node["pos"]) == 2 and len(node["size"]) == 2
    notes = [n for n in workflow["nodes"] if n["type"] == "Note"]
    assert len(notes) == 1, "each example explains itself in one Note"
    text = notes[0]["widgets_values"][0]
    assert len(text) > 300 and "deadiff_v1.ckpt" in text and "qth/DEADiff" in text and SD15 in text
    for node in workflow["nodes"]:
        if node["type"] == "Note":
            continue
        assert node["properties"]["Node name for S&R"] == node["type"]
        if node["type"] in PACK_TYPES:
            assert node["properties"]["cnr_id"] == "comfyui-deadiff"
        models = node["properties"].get("models")
        if node["type"] in ("CheckpointLoaderSimple", "DEADiffModelLoader", "ControlNetLoader"):
            # the front end's missing-models dialog names the file, its folder and where to get it
            assert models and models[0]["name"] == node["widgets_values"][0], node["type"]
            assert models[0]["url"].startswith("https://huggingface.co/")
    # every example samples with DEADiff from a reference image, except the one that loads a saved style
    reference = "DEADiffLoadStyle" if name == LOAD_SAVED else "LoadImage"
    assert {n["type"] for n in workflow["nodes"]} >= {
        "CheckpointLoaderSimple",
        "DEADiffModelLoader",
        reference,
        "DEADiffApply",
        "KSampler",
        "SaveImage",
    }


# --------------------------------------------------------------------------------------------------
# real node definitions and ComfyUI's validation, original values


def check_official_sampling(prompt: dict):
    (ckpt,) = of_type(prompt, "CheckpointLoaderSimple")
    assert prompt[ckpt]["inputs"]["ckpt_name"] == SD15
    (loader,) = of_type(prompt, "DEADiffModelLoader")
    assert prompt[loader]["inputs"]["deadiff_name"] == DEADIFF
    (sampler,) = of_type(prompt, "KSampler")
    inputs = prompt[sampler]["inputs"]
    assert (inputs["steps"], inputs["cfg"], inputs["sampler_name"], inputs["scheduler"], inputs["denoise"]) == (
        50,
        8.0,
        "ddim",
        "ddim_uniform",
        1.0,
    )
    assert isinstance(inputs["seed"], int)
    (latent,) = of_type(prompt, "EmptyLatentImage")
    assert prompt[latent]["inputs"] == {"width": 512, "height": 512, "batch_size": 1}
    negative = source(prompt, sampler, "negative")[0]
    if prompt[negative]["class_type"] == "ControlNetApplyAdvanced":
        negative = source(prompt, negative, "negative")[0]
    assert prompt[negative]["inputs"]["text"] == OFFICIAL_NEGATIVE
    positive = source(prompt, sampler, "positive")[0]
    if prompt[positive]["class_type"] == "ControlNetApplyAdvanced":
        positive = source(prompt, positive, "positive")[0]
    assert prompt[positive]["class_type"] == "CLIPTextEncode" and prompt[positive]["inputs"]["text"].strip()
    for apply in of_type(prompt, "DEADiffApply"):
        a = prompt[apply]["inputs"]
        assert (a["start_at"], a["end_at"]) == (0.0, 1.0)
        assert a["style_weight"] == 1.0 and a["content_weight"] == 1.0
        assert source(prompt, apply, "deadiff")[0] == loader
        # the official method: zero tokens in the negative pass, the official layer split
        assert not {"negative_style", "negative_content", "routing"} & set(a)
    for encoder in of_type(prompt, "DEADiffStyleEncoder") + of_type(prompt, "DEADiffContentEncoder"):
        assert prompt[encoder]["inputs"]["batch_mode"] == "concatenate"
        assert source(prompt, encoder, "deadiff")[0] == loader
    return sampler


def encoder_image(prompt: dict, apply: str, branch: str, encoder_type: str) -> str:
    encoder = source(prompt, apply, branch)[0]
    assert prompt[encoder]["class_type"] == encoder_type
    image = source(prompt, encoder, "image")[0]
    assert prompt[image]["class_type"] == "LoadImage"
    return image


def check_structure(name: str, prompt: dict, sampler: str):
    applies = of_type(prompt, "DEADiffApply")
    (ckpt,) = of_type(prompt, "CheckpointLoaderSimple")
    if name in ("deadiff_style_mixing", "deadiff_regional_styles"):
        first, second = applies
        assert source(prompt, sampler, "model")[0] == second and source(prompt, second, "model")[0] == first
        assert source(prompt, first, "model") == (ckpt, 0)
        images = {encoder_image(prompt, a, "style", "DEADiffStyleEncoder") for a in applies}
        assert len(images) == 2, "two different references"
        for a in applies:
            assert "content" not in prompt[a]["inputs"]
        masks = [source(prompt, a, "attn_mask")[0] for a in applies] if name == "deadiff_regional_styles" else []
        assert all(prompt[m]["class_type"] == "MaskComposite" for m in masks) and len(set(masks)) == len(masks)
        if name == "deadiff_style_mixing":
            assert all("attn_mask" not in prompt[a]["inputs"] for a in applies)
        return
    (apply,) = applies
    assert source(prompt, sampler, "model")[0] == apply
    inputs = prompt[apply]["inputs"]
    assert "attn_mask" not in inputs
    if name == "deadiff_style_blend":
        assert "content" not in inputs
        mix = source(prompt, apply, "style")[0]
        mixing = prompt[mix]["inputs"]
        assert prompt[mix]["class_type"] == "DEADiffMixStyles"
        assert (mixing["mode"], mixing["weight_1"], mixing["weight_2"]) == ("weighted sum", 0.7, 0.3)
        assert "style_3" not in mixing and "style_4" not in mixing
        images = set()
        for slot in ("style_1", "style_2"):
            encoder = source(prompt, mix, slot)[0]
            assert prompt[encoder]["class_type"] == "DEADiffStyleEncoder"
            images.add(source(prompt, encoder, "image")[0])
        assert len(images) == 2 and all(prompt[i]["class_type"] == "LoadImage" for i in images)
    elif name == LOAD_SAVED:
        assert "content" not in inputs and not of_type(prompt, "LoadImage"), "no reference image"
        (saved,) = of_type(prompt, "DEADiffLoadStyle")
        assert source(prompt, apply, "style") == (saved, 0)
        assert source(prompt, saved, "deadiff") == source(prompt, apply, "deadiff")
        # the file the saved-style example writes on its first run (filename_prefix + counter 00001)
        prefix = next(iter(ui_widget_values(load(SAVED), "DEADiffSaveTokens")))[0]
        folder, stem = prefix.split("/")
        assert folder == "deadiff"
        assert prompt[saved]["inputs"]["tokens_file"] == f"{stem}_00001_.safetensors [output]"
    elif name == "deadiff_content_transfer":
        assert "style" not in inputs  # official 'content' mode: zero tokens at the style layers
        encoder_image(prompt, apply, "content", "DEADiffContentEncoder")
    elif name == "deadiff_style_and_content":
        style = encoder_image(prompt, apply, "style", "DEADiffStyleEncoder")
        content = encoder_image(prompt, apply, "content", "DEADiffContentEncoder")
        assert style != content, "style from one image, content from another"
    else:
        assert "content" not in inputs  # official 'style' mode: zero tokens at the content layers
        encoder_image(prompt, apply, "style", "DEADiffStyleEncoder")
    encoders = of_type(prompt, "DEADiffStyleEncoder") + of_type(prompt, "DEADiffContentEncoder")
    if name == REGION:
        (encoder,) = encoders
        assert prompt[encoder]["inputs"]["resize_mode"] == "center crop"
        assert prompt[encoder]["inputs"]["pad_color"] == "#808080"
        mask = source(prompt, encoder, "reference_mask")[0]
        assert prompt[mask]["class_type"] == "MaskComposite" and prompt[mask]["inputs"]["operation"] == "add"
        (shown,) = of_type(prompt, "PreviewImage")
        assert source(prompt, shown, "images") == (encoder, 1), "the Preview Image shows the encoder's preview"
    else:  # the other examples read the reference as officially: squashed, all of it
        for encoder in encoders:
            assert prompt[encoder]["inputs"].get("resize_mode", "squash") == "squash"
            assert "reference_mask" not in prompt[encoder]["inputs"]
    if name == SAVED:
        (saver,) = of_type(prompt, "DEADiffSaveTokens")
        assert source(prompt, saver, "tokens") == source(prompt, apply, "style"), "saves the tokens it applies"
        assert prompt[saver]["inputs"]["filename_prefix"] == "deadiff/my_style"
    if name == "deadiff_lora":
        (lora,) = of_type(prompt, "LoraLoader")
        assert source(prompt, apply, "model") == (lora, 0) and source(prompt, lora, "model") == (ckpt, 0)
        for text in of_type(prompt, "CLIPTextEncode"):
            assert source(prompt, text, "clip") == (lora, 1), "prompts go through the LoRA's CLIP"
    else:
        assert source(prompt, apply, "model") == (ckpt, 0)
    if name == "deadiff_controlnet":
        (control,) = of_type(prompt, "ControlNetApplyAdvanced")
        (loader,) = of_type(prompt, "ControlNetLoader")
        assert prompt[loader]["inputs"]["control_net_name"] == CANNY
        assert source(prompt, sampler, "positive") == (control, 0)
        assert source(prompt, sampler, "negative") == (control, 1)
        canny = source(prompt, control, "image")[0]
        assert prompt[canny]["class_type"] == "Canny"
        assert prompt[source(prompt, canny, "image")[0]]["class_type"] == "LoadImage"


@pytest.mark.parametrize("name", NAMES)
def test_converts_and_validates_with_original_values(comfy, example_files, request, name):
    files_for(request, name)
    prompt = to_api(comfy, load(name))
    for node in prompt.values():
        assert node["class_type"] in comfy.nodes.NODE_CLASS_MAPPINGS
        assert node["class_type"] not in ("Note", "MarkdownNote", "PrimitiveNode", "Reroute")
    valid = comfy.validate(prompt)
    assert valid[0], f"ComfyUI refused {name}: {valid[1]} {valid[3]}"
    outputs = sorted((n for t in OUTPUT_TYPES for n in of_type(prompt, t)), key=int)
    assert of_type(prompt, "SaveImage") and sorted(valid[2], key=int) == outputs
    sampler = check_official_sampling(prompt)
    check_structure(name, prompt, sampler)


# --------------------------------------------------------------------------------------------------
# end to end through the executor


def small(prompt: dict, tag: str) -> dict:
    """The test edition of an example: tiny models, 64x64, 2 steps, the latent captured, a unique prefix."""
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        if node["class_type"] in TEST_SUBSTITUTES:
            node["class_type"] = TEST_SUBSTITUTES[node["class_type"]]
            node["inputs"] = {"seed": 0}
        elif node["class_type"] == "EmptyLatentImage":
            node["inputs"].update(width=64, height=64)
        elif node["class_type"] == "KSampler":
            node["inputs"]["steps"] = 2
        elif node["class_type"] == "SaveImage":
            node["inputs"]["filename_prefix"] = f"examples_test/{tag}"
    (sampler,) = of_type(prompt, "KSampler")
    prompt["capture"] = {"class_type": "DEADiffTest_CaptureLatent", "inputs": {"samples": [sampler, 0], "key": tag}}
    return prompt


def without(prompt: dict, apply: str) -> dict:
    """The same graph with one DEADiff Apply node taken out (its MODEL input passed straight on)."""
    prompt = copy.deepcopy(prompt)
    model = prompt[apply]["inputs"]["model"]
    del prompt[apply]
    for node in prompt.values():
        for name, value in node["inputs"].items():
            if value == [apply, 0]:
                node["inputs"][name] = model
    return prompt


def run_and_capture(comfy, prompt: dict, tag: str) -> torch.Tensor:
    captured = comfy.module("DEADiffTest_TinySD15").CAPTURED
    captured.pop(tag, None)
    comfy.run(prompt)
    return captured[tag]


def saved_tokens_files(comfy) -> set:
    return set((comfy.base / "output" / "deadiff").glob("*.safetensors"))


@pytest.mark.parametrize("name", NAMES)
def test_runs_end_to_end(comfy, example_files, request, name):
    files_for(request, name)
    prompt = to_api(comfy, load(name))
    tokens_before = saved_tokens_files(comfy)
    latent = run_and_capture(comfy, small(prompt, name), name)
    written = saved_tokens_files(comfy) - tokens_before
    assert len(written) == len(of_type(prompt, "DEADiffSaveTokens")), written
    assert latent.shape == (1, 4, 8, 8) and torch.isfinite(latent).all()
    saved = sorted((comfy.base / "output" / "examples_test").glob(f"{name}_*.png"))
    assert saved, "Save Image wrote no file"
    with Image.open(saved[-1]) as picture:
        assert picture.size == (64, 64)
        assert "prompt" in picture.text  # ComfyUI's own metadata
    for apply in of_type(prompt, "DEADiffApply"):
        tag = f"{name}-without-{apply}"
        other = run_and_capture(comfy, small(without(prompt, apply), tag), tag)
        assert not torch.equal(other, latent), f"DEADiff Apply node {apply} does not change {name}'s picture"


def test_regional_masks_are_the_two_halves(comfy, example_files):
    """The regional example's mask nodes make the left and the right half of the 512x512 picture."""
    prompt = to_api(comfy, load("deadiff_regional_styles"))
    masks = {}
    for apply in of_type(prompt, "DEADiffApply"):
        masks[prompt[apply]["_meta"]["title"]] = source(prompt, apply, "attn_mask")[0]
    graph = {nid: node for nid, node in prompt.items() if node["class_type"] in ("SolidMask", "MaskComposite")}
    for title, mask in masks.items():
        graph[f"keep-{mask}"] = {"class_type": "DEADiffTest_Keep", "inputs": {"value": [mask, 0], "key": title}}
    comfy.run(graph)
    captured = comfy.module("DEADiffTest_TinySD15").CAPTURED
    left = captured["Apply style (left half)"]
    right = captured["Apply style (right half)"]
    assert left.shape == right.shape == (1, 512, 512)
    assert torch.equal(left[..., :256], torch.ones(1, 512, 256)) and not left[..., 256:].any()
    assert torch.equal(left + right, torch.ones(1, 512, 512)), "the halves cover the picture once"


def test_reference_region_preview_is_the_top_half_of_the_centred_square(comfy, example_files):
    """deadiff_reference_region on a 4:3 reference: the encoder reads the centred square (center crop), its
    224x224 preview shows it with the top half (the mask's region) as it is and the bottom half dimmed."""
    import torch.nn.functional as F

    prompt = to_api(comfy, load(REGION))
    (encoder,) = of_type(prompt, "DEADiffStyleEncoder")
    (image,) = of_type(prompt, "LoadImage")
    name = "reference_region_4x3.png"  # the black mask's 1024x768 shape, so the white one is exactly the top half
    pixels = comfy.module("DEADiffTest_TinySD15").image_from_seed(7, 128, 96)[0]
    Image.fromarray((pixels.numpy() * 255).round().astype("uint8")).save(comfy.base / "input" / name)
    prompt[image]["inputs"]["image"] = name
    wanted = {"LoadImage", "DEADiffModelLoader", "SolidMask", "MaskComposite", "DEADiffStyleEncoder"}
    graph = {nid: node for nid, node in prompt.items() if node["class_type"] in wanted}
    whole = copy.deepcopy(graph[encoder])  # the same encoder without the mask: the whole square
    del whole["inputs"]["reference_mask"]
    graph["whole"] = whole
    for key, value in (("masked", [encoder, 1]), ("whole", ["whole", 1]), ("image", [image, 0])):
        graph[f"keep-{key}"] = {"class_type": "DEADiffTest_Keep", "inputs": {"value": value, "key": f"region-{key}"}}
    comfy.run(graph)
    captured = comfy.module("DEADiffTest_TinySD15").CAPTURED
    masked, whole, loaded = captured["region-masked"], captured["region-whole"], captured["region-image"]
    assert masked.shape == whole.shape == (1, 224, 224, 3)
    # the plain reference: the centred 96x96 square, resized as the official code resizes (antialiased bicubic)
    square = loaded[:, :, 16:112].movedim(-1, 1)
    expected = F.interpolate(square, size=(224, 224), mode="bicubic", antialias=True, align_corners=False)
    assert torch.allclose(whole, expected.clamp(0, 1).movedim(1, -1), atol=1e-5)
    # rows 0-111 are the region; a patch row across row 112 (32-pixel patches) is half read
    assert torch.equal(masked[:, :96], whole[:, :96]), "the region is shown as it is"
    assert torch.allclose(masked[:, 128:], whole[:, 128:] * 0.25, atol=1e-6), "the rest is dimmed"


def test_loaded_style_gives_the_picture_of_the_reference_it_was_saved_from(comfy, example_files, saved_style_tokens):
    """deadiff_load_saved_style, with the tokens deadiff_saved_style wrote, samples exactly what the saved
    example samples from its reference image with the same prompt and seed."""
    loaded = to_api(comfy, load(LOAD_SAVED))
    saved = to_api(comfy, load(SAVED))
    (text,) = [n for n in of_type(saved, "CLIPTextEncode") if not saved[n]["inputs"]["text"].startswith("over-")]
    (loaded_text,) = [
        n for n in of_type(loaded, "CLIPTextEncode") if not loaded[n]["inputs"]["text"].startswith("over-")
    ]
    saved[text]["inputs"]["text"] = loaded[loaded_text]["inputs"]["text"]
    (ksampler,) = of_type(saved, "KSampler")
    assert saved[ksampler]["inputs"]["seed"] == loaded[of_type(loaded, "KSampler")[0]]["inputs"]["seed"]
    from_file = run_and_capture(comfy, small(loaded, "from-saved-file"), "from-saved-file")
    from_image = run_and_capture(comfy, small(saved, "from-reference-image"), "from-reference-image")
    assert torch.equal(from_file, from_image)


def test_load_saved_style_refuses_tokens_of_another_deadiff_file(comfy, example_files, saved_style_tokens):
    """The file the load example names only loads with the DEADiff file that made it."""
    other = "deadiff_examples_other.safetensors"
    path = comfy.base / "models" / "deadiff" / other
    deadiff_fakes.place(path.parent, other, seed=5)
    try:
        prompt = to_api(comfy, load(LOAD_SAVED))
        (loader,) = of_type(prompt, "DEADiffModelLoader")
        prompt[loader]["inputs"]["deadiff_name"] = other
        with pytest.raises(GraphError, match="made with another DEADiff file"):
            comfy.run(small(prompt, "other-deadiff"))
    finally:
        path.unlink()


# --------------------------------------------------------------------------------------------------
# the converter on what the examples do not use: front-end-only nodes, bypass, mute, converted widgets


def test_converter_front_end_only_nodes_bypass_and_mute(comfy, example_files):
    workflow = load("deadiff_style_transfer")
    plain = to_api(comfy, workflow)
    nodes = {n["id"]: n for n in workflow["nodes"]}
    links = workflow["links"]
    sampler = next(n for n in workflow["nodes"] if n["type"] == "KSampler")
    apply = next(n for n in workflow["nodes"] if n["type"] == "DEADiffApply")
    next_id = max(nodes) + 1
    next_link = max(link[0] for link in links) + 1

    # Apply -> FreeU_V2 (bypassed) -> Reroute -> KSampler.model
    model_link = next(link for link in links if link[3] == sampler["id"] and link[1] == apply["id"])
    freeu_id, reroute_id, primitive_id, muted_id = next_id, next_id + 1, next_id + 2, next_id + 3
    model_link[3], model_link[4] = freeu_id, 0
    apply["outputs"][0]["links"] = [model_link[0]]
    workflow["nodes"].append(
        {
            "id": freeu_id,
            "type": "FreeU_V2",
            "pos": [0, 0],
            "size": [200, 100],
            "flags": {},
            "order": 0,
            "mode": 4,
            "inputs": [{"name": "model", "type": "MODEL", "link": model_link[0]}],
            "outputs": [{"name": "MODEL", "type": "MODEL", "links": [next_link]}],
            "properties": {},
            "widgets_values": [1.3, 1.4, 0.9, 0.2],
        }
    )
    workflow["nodes"].append(
        {
            "id": reroute_id,
            "type": "Reroute",
            "pos": [0, 0],
            "size": [75, 26],
            "flags": {},
            "order": 0,
            "mode": 0,
            "inputs": [{"name": "", "type": "*", "link": next_link}],
            "outputs": [{"name": "", "type": "MODEL", "links": [next_link + 1]}],
            "properties": {},
        }
    )
    links.append([next_link, freeu_id, 0, reroute_id, 0, "MODEL"])
    links.append([next_link + 1, reroute_id, 0, sampler["id"], 0, "MODEL"])
    sampler["inputs"][0]["link"] = next_link + 1
    # a PrimitiveNode drives the sampler's seed through a converted widget
    workflow["nodes"].append(
        {
            "id": primitive_id,
            "type": "PrimitiveNode",
            "pos": [0, 0],
            "size": [200, 80],
            "flags": {},
            "order": 0,
            "mode": 0,
            "inputs": [],
            "outputs": [{"name": "INT", "type": "INT", "links": [next_link + 2], "widget": {"name": "seed"}}],
            "properties": {"Run widget replace on values": False},
            "widgets_values": [777, "fixed"],
        }
    )
    sampler["inputs"].append({"name": "seed", "type": "INT", "widget": {"name": "seed"}, "link": next_link + 2})
    links.append([next_link + 2, primitive_id, 0, sampler["id"], len(sampler["inputs"]) - 1, "INT"])
    # a muted second output
    decode = next(n for n in workflow["nodes"] if n["type"] == "VAEDecode")
    workflow["nodes"].append(
        {
            "id": muted_id,
            "type": "PreviewImage",
            "pos": [0, 0],
            "size": [200, 200],
            "flags": {},
            "order": 0,
            "mode": 2,
            "inputs": [{"name": "images", "type": "IMAGE", "link": next_link + 3}],
            "outputs": [],
            "properties": {},
            "widgets_values": [],
        }
    )
    decode["outputs"][0]["links"].append(next_link + 3)
    links.append([next_link + 3, decode["id"], 0, muted_id, 0, "IMAGE"])

    converted = to_api(comfy, workflow)
    expected = copy.deepcopy(plain)
    (ksampler,) = of_type(expected, "KSampler")
    expected[ksampler]["inputs"]["seed"] = 777
    assert converted == expected
    assert comfy.validate(converted)[0]


def test_converter_checks_widgets_and_node_types(comfy):
    info = comfy_node_info(comfy.nodes)
    # the front end's extra widgets: "control after generate" after a seed, the upload button of LoadImage
    assert [w.name for w in widget_layout(info("KSampler"))] == [
        "seed",
        None,
        "steps",
        "cfg",
        "sampler_name",
        "scheduler",
        "denoise",
    ]
    assert [(w.name, w.sent) for w in widget_layout(info("LoadImage"))] == [("image", True), ("upload", False)]
    # V3 (comfy_api) nodes answer through GET_NODE_INFO_V1, as the server's /object_info does
    from comfy_api.internal import _ComfyNodeInternal

    assert issubclass(comfy.nodes.NODE_CLASS_MAPPINGS["Canny"], _ComfyNodeInternal)
    assert [w.name for w in widget_layout(info("Canny"))] == ["low_threshold", "high_threshold"]
    assert [w.name for w in widget_layout(info("DEADiffApply"))] == [
        "style_weight",
        "content_weight",
        "start_at",
        "end_at",
    ]

    workflow = load("deadiff_style_transfer")
    sampler = next(n for n in workflow["nodes"] if n["type"] == "KSampler")
    sampler["widgets_values"] = sampler["widgets_values"][:-1]
    with pytest.raises(WorkflowError, match="KSampler.*6 widget values"):
        to_api(comfy, workflow)

    workflow = load("deadiff_style_transfer")
    next(n for n in workflow["nodes"] if n["type"] == "DEADiffApply")["type"] = "DEADiffApplyFromTheFuture"
    with pytest.raises(MissingNodeTypes, match="DEADiffApplyFromTheFuture"):
        to_api(comfy, workflow)


@pytest.mark.server
def test_comfyui_serves_the_examples_as_templates(comfy, comfy_server):
    """ComfyUI's template browser lists a pack's example_workflows and serves them with their thumbnails."""
    import urllib.request

    templates = comfy_server.get("/workflow_templates")
    assert sorted(templates.get("ComfyUI-DEADiff", [])) == sorted(NAMES)
    for name in NAMES:
        assert comfy_server.get(f"/api/workflow_templates/ComfyUI-DEADiff/{name}.json") == load(name)
        with urllib.request.urlopen(f"{comfy_server.url}/api/workflow_templates/ComfyUI-DEADiff/{name}.jpg") as r:
            assert r.headers["Content-Type"] == "image/jpeg"
            assert r.read() == (EXAMPLES / f"{name}.jpg").read_bytes()
    # what the front end builds its nodes from is what the converter used
    object_info = comfy_server.get("/object_info")
    info = comfy_node_info(comfy.nodes)
    for name in NAMES:
        for node in load(name)["nodes"]:
            if node["type"] != "Note":
                served = object_info[node["type"]]
                assert served["input_order"] == info(node["type"])["input_order"], node["type"]
                assert served["output_name"] == list(info(node["type"])["output_name"]), node["type"]
