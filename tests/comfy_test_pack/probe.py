"""A SAMPLER for SamplerCustom that records what ComfyUI's sampler path predicts at each step.

It runs plain Euler steps and stores (sigma, x, denoised) per step in PROBES[key], so a test can
recompute the same predictions with an independent reference and compare.
"""

from __future__ import annotations

import comfy.samplers
import torch

PROBES: dict[str, list] = {}


def _probe_sampler(model, x, sigmas, extra_args=None, callback=None, disable=None, key="probe"):
    extra_args = extra_args or {}
    records = []
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        records.append((float(sigmas[i]), x.detach().clone(), denoised.detach().clone()))
        if sigmas[i + 1] > 0:
            x = x + (x - denoised) / sigmas[i] * (sigmas[i + 1] - sigmas[i])
        else:
            x = denoised
    PROBES[key] = records
    return x


class DEADiffTest_ProbeSampler:
    DESCRIPTION = "Test only: an Euler SAMPLER that records the model's denoised prediction at every step."
    CATEGORY = "DEADiff/testing"
    RETURN_TYPES = ("SAMPLER",)
    FUNCTION = "get"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "key": ("STRING", {"default": "probe", "tooltip": "Name under which PROBES stores the steps."})
            }
        }

    def get(self, key):
        return (comfy.samplers.KSAMPLER(_probe_sampler, extra_options={"key": key}),)


def recorded(key: str) -> list[tuple[float, torch.Tensor, torch.Tensor]]:
    return PROBES[key]
