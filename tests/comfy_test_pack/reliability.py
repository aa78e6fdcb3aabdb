"""Test-only nodes for the reliability tests (tests/test_reliability_*.py, tests/test_soak.py).

- DEADiffTest_MaskFromSeed: a MASK of any size and batch with values in any range, NaN included.
- DEADiffTest_GatedSampler: an Euler SAMPLER that, after its first step, writes a marker file and
  keeps calling the model until ComfyUI interrupts it, so a test can POST /interrupt at a moment
  that is certainly mid-sampling (without relying on timing).
- DEADiffTest_SaveLatentFile: writes a LATENT's samples bit-exactly to the output folder
  (.safetensors), so results from two server processes can be compared with torch.equal.
"""

from __future__ import annotations

import os
import time

import comfy.model_management
import comfy.samplers
import folder_paths
import torch
from safetensors.torch import save_file

CATEGORY = "DEADiff/testing"


class DEADiffTest_MaskFromSeed:
    DESCRIPTION = (
        "Test only. A random MASK batch (B, H, W) with values uniform in low..high (any range, "
        "negative or above 1 included) and a fraction of NaN values, the same for the same inputs."
    )
    CATEGORY = CATEGORY
    FUNCTION = "make"
    RETURN_TYPES = ("MASK",)
    OUTPUT_TOOLTIPS = ("Random mask batch.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF, "tooltip": "Random seed."}),
                "width": ("INT", {"default": 64, "min": 1, "max": 8192, "tooltip": "Width in pixels."}),
                "height": ("INT", {"default": 64, "min": 1, "max": 8192, "tooltip": "Height in pixels."}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 64, "tooltip": "Number of masks."}),
                "low": ("FLOAT", {"default": 0.0, "min": -1e6, "max": 1e6, "step": 0.01, "tooltip": "Smallest value."}),
                "high": ("FLOAT", {"default": 1.0, "min": -1e6, "max": 1e6, "step": 0.01, "tooltip": "Largest value."}),
                "nan_fraction": (
                    "FLOAT",
                    {
                        "default": 0.0,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "Share of the values replaced by NaN.",
                    },
                ),
            },
            "optional": {
                "sanitised": (
                    "BOOLEAN",
                    {"default": False, "tooltip": "Return the same mask with NaN as 0 and values clamped to 0..1."},
                ),
            },
        }

    def make(self, seed, width, height, batch_size, low, high, nan_fraction, sanitised=False):
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        mask = low + (high - low) * torch.rand((batch_size, height, width), generator=gen)
        if nan_fraction > 0:
            mask[torch.rand(mask.shape, generator=gen) < nan_fraction] = float("nan")
        if sanitised:
            mask = torch.nan_to_num(mask, nan=0.0).clamp(0.0, 1.0)
        return (mask,)


def _gated_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, marker="", hold_seconds=60.0):
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        if i == 0 and marker:
            with open(marker, "w") as f:
                f.write("sampling")
            deadline = time.monotonic() + hold_seconds
            # Every model call goes through ComfyUI's ops, which raise once /interrupt was posted.
            while time.monotonic() < deadline:
                model(x, sigmas[i] * s_in, **extra_args)
                comfy.model_management.throw_exception_if_processing_interrupted()
                time.sleep(0.01)
        x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i]) if sigmas[i + 1] > 0 else denoised
    return x


class DEADiffTest_GatedSampler:
    DESCRIPTION = (
        "Test only: an Euler SAMPLER that writes `marker` after its first step, then keeps calling the "
        "model (for at most hold_seconds) until the prompt is interrupted."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "get"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "marker": ("STRING", {"default": "", "tooltip": "File written once sampling is under way."}),
                "hold_seconds": (
                    "FLOAT",
                    {
                        "default": 60.0,
                        "min": 0.0,
                        "max": 600.0,
                        "tooltip": "How long to wait for the interrupt before finishing normally.",
                    },
                ),
            }
        }

    def get(self, marker, hold_seconds):
        return (comfy.samplers.KSAMPLER(_gated_euler, extra_options={"marker": marker, "hold_seconds": hold_seconds}),)


class DEADiffTest_SaveLatentFile:
    DESCRIPTION = "Test only: writes a LATENT's samples, bit-exact, to the output folder as .safetensors."
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "samples": ("LATENT", {"tooltip": "The latent to write."}),
                "filename": (
                    "STRING",
                    {"default": "latent.safetensors", "tooltip": "Plain file name in the output folder."},
                ),
            }
        }

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")

    def save(self, samples, filename):
        name = os.path.basename(filename)
        path = os.path.join(folder_paths.get_output_directory(), name)
        save_file({"samples": samples["samples"].detach().to("cpu").contiguous()}, path)
        return {"ui": {"latent_file": [name]}, "result": ()}


NODE_CLASS_MAPPINGS = {
    "DEADiffTest_MaskFromSeed": DEADiffTest_MaskFromSeed,
    "DEADiffTest_GatedSampler": DEADiffTest_GatedSampler,
    "DEADiffTest_SaveLatentFile": DEADiffTest_SaveLatentFile,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "DEADiffTest_MaskFromSeed": "Mask From Seed (DEADiff test)",
    "DEADiffTest_GatedSampler": "Gated Sampler (DEADiff test)",
    "DEADiffTest_SaveLatentFile": "Save Latent File (DEADiff test)",
}
