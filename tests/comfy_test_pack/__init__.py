"""Test-only ComfyUI node pack: tiny random models made of ComfyUI's own classes.

Loaded by ComfyUI like any custom node pack (the test harness links this folder into a temporary
`custom_nodes`). It is never part of the shipped DEADiff pack. Builders live in `tiny_models.py`
and are re-exported here, so a test holding this module (`comfy.module("DEADiffTest_TinySD15")`)
can call `write_tiny_lora`, `tiny_sd15`, ... and read `CAPTURED` directly.
"""

from __future__ import annotations

import os

import torch

import folder_paths

from .tiny_models import (  # noqa: F401  (re-exported for tests)
    ATTN2_PROJECTIONS,
    LORA_CONV,
    build_controlnet,
    build_sd15_clip,
    build_sd15_model,
    build_sd15_vae,
    build_sdxl_model,
    clear_cache,
    clip_text_config,
    image_from_seed,
    init_parameters_,
    sd15_unet_config,
    sdxl_unet_config,
    taesd_state_dict,
    tiny_controlnet,
    tiny_lora_state_dict,
    tiny_sd15,
    tiny_sdxl,
    write_tiny_lora,
)

from .probe import DEADiffTest_ProbeSampler

CATEGORY = "DEADiff/testing"

# key -> tensor captured by DEADiffTest_CaptureLatent / DEADiffTest_CaptureImage (this process only)
CAPTURED: dict[str, torch.Tensor] = {}

_SEED = (
    "INT",
    {
        "default": 0,
        "min": 0,
        "max": 0xFFFFFFFF,
        "tooltip": "Seed for every random weight; the same seed always gives bit-identical weights.",
    },
)
_CONTEXT_DIM = (
    "INT",
    {
        "default": 64,
        "min": 8,
        "max": 1024,
        "step": 8,
        "tooltip": "Cross-attention context width = the text encoder's hidden size (768 in real SD1.5).",
    },
)
_MODEL_CHANNELS = (
    "INT",
    {
        "default": 32,
        "min": 32,
        "max": 320,
        "step": 32,
        "tooltip": "UNet base width (320 in real SD1.5); attn2 widths are 1x, 2x, 4x this.",
    },
)


class DEADiffTest_TinySD15:
    DESCRIPTION = (
        "Test only. A tiny random SD1.5-shaped checkpoint made of ComfyUI's own classes: the SD15 "
        "model config with the full SD1.5 UNet topology (16 cross-attention sites) at small widths, "
        "a tiny CLIP-L text encoder with the real SD1 tokenizer, and a random TAESD VAE."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    OUTPUT_TOOLTIPS = (
        "Tiny SD1.5 UNet (eps prediction, SD1.5 latent format, 4 latent channels).",
        "Tiny CLIP-L text encoder; CLIPTextEncode gives (B, 77, context_dim) conditioning.",
        "Random TAESD VAE (8x down/up scaling, 4 latent channels).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"seed": _SEED},
            "optional": {"context_dim": _CONTEXT_DIM, "model_channels": _MODEL_CHANNELS},
        }

    def load(self, seed, context_dim=64, model_channels=32):
        model, clip, vae = tiny_sd15(seed, context_dim, model_channels)
        # clones: graphs patch their own copy, never the cached one
        return (model.clone(), clip.clone(), vae)


class DEADiffTest_TinySDXL:
    DESCRIPTION = (
        "Test only. A tiny random SDXL-shaped model (ComfyUI's SDXL model config and model class, "
        "with the size/crop adm conditioning), for checking that SD1.5-only nodes refuse it."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("Tiny SDXL UNet; its model_config is comfy.supported_models.SDXL.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"seed": _SEED},
            "optional": {
                "context_dim": (
                    _CONTEXT_DIM[0],
                    {
                        **_CONTEXT_DIM[1],
                        "tooltip": "Cross-attention context width; the adm input is this (pooled text) + 6 x 256.",
                    },
                )
            },
        }

    def load(self, seed, context_dim=64):
        return (tiny_sdxl(seed, context_dim).clone(),)


class DEADiffTest_TinyControlNet:
    DESCRIPTION = (
        "Test only. A tiny random ControlNet (ComfyUI's cldm ControlNet) matching the tiny SD1.5 "
        "UNet of the same widths; its output convs are random, not zero, so it changes the result."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("CONTROL_NET",)
    OUTPUT_TOOLTIPS = ("Use with the core Apply ControlNet nodes on a DEADiffTest_TinySD15 model of the same widths.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"seed": _SEED},
            "optional": {"context_dim": _CONTEXT_DIM, "model_channels": _MODEL_CHANNELS},
        }

    def load(self, seed, context_dim=64, model_channels=32):
        return (tiny_controlnet(seed, context_dim, model_channels),)


class DEADiffTest_SaveTinyLora:
    DESCRIPTION = (
        "Test only. Writes a random kohya-format LoRA for the tiny SD1.5 UNet (attn2 to_q/to_k/"
        "to_v/to_out at all 16 sites and one conv) into models/loras. A graph validates its "
        "LoraLoader inputs before it runs, so load the file in a later prompt."
    )
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("lora_name",)
    OUTPUT_TOOLTIPS = ("The file name, as LoraLoader lists it.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "filename": (
                    "STRING",
                    {
                        "default": "deadiff_tiny_lora.safetensors",
                        "tooltip": "File name inside the first models/loras folder.",
                    },
                ),
                "seed": _SEED,
                "rank": ("INT", {"default": 4, "min": 1, "max": 64, "tooltip": "LoRA rank (alpha = rank)."}),
                "strength_scale": (
                    "FLOAT",
                    {
                        "default": 0.5,
                        "min": 0.0,
                        "max": 10.0,
                        "step": 0.01,
                        "tooltip": "Size of each patched layer's change relative to its output, at strength 1.",
                    },
                ),
            },
            "optional": {"context_dim": _CONTEXT_DIM, "model_channels": _MODEL_CHANNELS},
        }

    def save(self, filename, seed, rank, strength_scale, context_dim=64, model_channels=32):
        name = os.path.basename(filename.strip())
        if not name.endswith(".safetensors") or name == ".safetensors":
            raise ValueError(f"filename must be a plain name ending in .safetensors; got {filename!r}")
        path = os.path.join(folder_paths.get_folder_paths("loras")[0], name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_tiny_lora(path, seed, context_dim, model_channels, rank, strength_scale)
        return {"ui": {"lora_name": [name]}, "result": (name,)}


class DEADiffTest_ImageFromSeed:
    DESCRIPTION = (
        "Test only. A smooth random image batch in 0..1 (ComfyUI layout B, H, W, C), the same for the same inputs."
    )
    CATEGORY = CATEGORY
    FUNCTION = "make"
    RETURN_TYPES = ("IMAGE",)
    OUTPUT_TOOLTIPS = ("Random smooth image batch.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "seed": _SEED,
                "width": ("INT", {"default": 64, "min": 8, "max": 4096, "step": 8, "tooltip": "Width in pixels."}),
                "height": ("INT", {"default": 64, "min": 8, "max": 4096, "step": 8, "tooltip": "Height in pixels."}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Number of images."}),
                "channels": (
                    "INT",
                    {"default": 3, "min": 1, "max": 4, "tooltip": "1 (grey), 3 (RGB) or 4 (RGBA); 2 is refused."},
                ),
            }
        }

    def make(self, seed, width, height, batch_size, channels):
        return (image_from_seed(seed, width, height, batch_size, channels),)


def _summary(key, tensor):
    t = tensor.detach().to("cpu").clone()
    CAPTURED[key] = t
    return {"ui": {"key": [key], "shape": list(t.shape), "sum": [float(t.double().sum())]}, "result": ()}


class DEADiffTest_CaptureLatent:
    DESCRIPTION = (
        "Test only. Output node that keeps a copy of a LATENT's samples in this process "
        "(CAPTURED[key]) and reports its shape and sum in the UI output (the server's /history)."
    )
    CATEGORY = CATEGORY
    FUNCTION = "capture"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "samples": ("LATENT", {"tooltip": "The latent to capture."}),
                "key": ("STRING", {"default": "latent", "tooltip": "Name to store it under in CAPTURED."}),
            }
        }

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")  # always run, so CAPTURED reflects this prompt

    def capture(self, samples, key):
        return _summary(key, samples["samples"])


class DEADiffTest_CaptureImage:
    DESCRIPTION = (
        "Test only. Output node that keeps a copy of an IMAGE in this process (CAPTURED[key]) "
        "and reports its shape and sum in the UI output (the server's /history)."
    )
    CATEGORY = CATEGORY
    FUNCTION = "capture"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The image batch to capture."}),
                "key": ("STRING", {"default": "image", "tooltip": "Name to store it under in CAPTURED."}),
            }
        }

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")

    def capture(self, images, key):
        return _summary(key, images)


class _AnyType(str):
    """A type string that matches every type in ComfyUI's link validation (which compares with !=)."""

    def __ne__(self, other):
        return False

    __hash__ = str.__hash__


ANY = _AnyType("*")


class DEADiffTest_Keep:
    DESCRIPTION = (
        "Test only. Output node that accepts any value (MODEL, CLIP, CONDITIONING, ...) and keeps it "
        "in this process as CAPTURED[key], so a graph whose interesting result is not a latent or an "
        "image still has an output and still runs. Reports the value's Python type in the UI output."
    )
    CATEGORY = CATEGORY
    FUNCTION = "keep"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "value": (ANY, {"tooltip": "Any value; kept as it is (tensors are cloned to the CPU)."}),
                "key": ("STRING", {"default": "value", "tooltip": "Name to store it under in CAPTURED."}),
            }
        }

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")

    def keep(self, value, key):
        CAPTURED[key] = value.detach().to("cpu").clone() if isinstance(value, torch.Tensor) else value
        return {"ui": {"key": [key], "type": [type(value).__name__]}, "result": ()}


NODE_CLASS_MAPPINGS = {
    "DEADiffTest_TinySD15": DEADiffTest_TinySD15,
    "DEADiffTest_TinySDXL": DEADiffTest_TinySDXL,
    "DEADiffTest_TinyControlNet": DEADiffTest_TinyControlNet,
    "DEADiffTest_SaveTinyLora": DEADiffTest_SaveTinyLora,
    "DEADiffTest_ImageFromSeed": DEADiffTest_ImageFromSeed,
    "DEADiffTest_CaptureLatent": DEADiffTest_CaptureLatent,
    "DEADiffTest_CaptureImage": DEADiffTest_CaptureImage,
    "DEADiffTest_Keep": DEADiffTest_Keep,
    "DEADiffTest_ProbeSampler": DEADiffTest_ProbeSampler,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "DEADiffTest_TinySD15": "Tiny SD1.5 (DEADiff test)",
    "DEADiffTest_TinySDXL": "Tiny SDXL (DEADiff test)",
    "DEADiffTest_TinyControlNet": "Tiny ControlNet (DEADiff test)",
    "DEADiffTest_SaveTinyLora": "Save Tiny LoRA (DEADiff test)",
    "DEADiffTest_ImageFromSeed": "Image From Seed (DEADiff test)",
    "DEADiffTest_CaptureLatent": "Capture Latent (DEADiff test)",
    "DEADiffTest_CaptureImage": "Capture Image (DEADiff test)",
    "DEADiffTest_Keep": "Keep Any Value (DEADiff test)",
    "DEADiffTest_ProbeSampler": "Probe Sampler (DEADiff test)",
}

# nodes of the reliability tests (tests/test_reliability_*.py, tests/test_soak.py)
from .reliability import NODE_CLASS_MAPPINGS as _RELIABILITY_NODES  # noqa: E402
from .reliability import NODE_DISPLAY_NAME_MAPPINGS as _RELIABILITY_NAMES  # noqa: E402

NODE_CLASS_MAPPINGS.update(_RELIABILITY_NODES)
NODE_DISPLAY_NAME_MAPPINGS.update(_RELIABILITY_NAMES)

# stand-ins of other packs (tests/test_composition.py, tests/test_context_windows.py)
from .ipadapter_standin import NODE_CLASS_MAPPINGS as _STANDIN_NODES  # noqa: E402
from .ipadapter_standin import NODE_DISPLAY_NAME_MAPPINGS as _STANDIN_NAMES  # noqa: E402

from .sliding_context import NODE_CLASS_MAPPINGS as _SLIDING_NODES  # noqa: E402
from .sliding_context import NODE_DISPLAY_NAME_MAPPINGS as _SLIDING_NAMES  # noqa: E402

NODE_CLASS_MAPPINGS.update(_STANDIN_NODES)
NODE_DISPLAY_NAME_MAPPINGS.update(_STANDIN_NAMES)
NODE_CLASS_MAPPINGS.update(_SLIDING_NODES)
NODE_DISPLAY_NAME_MAPPINGS.update(_SLIDING_NAMES)
