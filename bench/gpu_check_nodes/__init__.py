"""Two helper nodes for bench/gpu_check.py, loaded by the ComfyUI server that script starts (never shipped
in the pack's node list; the script links this folder into a temporary custom_nodes):

- DEADiffBench_Probe: what ComfyUI's memory management holds right now (device memory, the loaded models,
  their patcher class, whether DynamicVRAM is on), returned as JSON in the node's UI output;
- DEADiffBench_Floor: the 16-key floor, the same UNet attending to `extra` zero keys/values at DEADiff's
  16 cross-attention sites and nothing else (bench/bench_sampling.py's floor, as a node).
"""

from __future__ import annotations

import json
import sys

import torch

import comfy.model_management as mm
import comfy.model_patcher
import nodes
from comfy.ldm.modules.attention import optimized_attention


class _AnyType(str):
    """A socket type every output connects to (only to order the probe after another node)."""

    def __ne__(self, other):
        return False


ANY = _AnyType("*")


def _patcher_report(patcher) -> dict:
    return {
        "model": type(patcher.model).__name__,
        "patcher": type(patcher).__name__,
        "dynamic": bool(getattr(patcher, "is_dynamic", lambda: False)()),
        "loaded_mb": round(patcher.loaded_size() / 2**20, 1),
        "size_mb": round(patcher.model_size() / 2**20, 1),
    }


class DEADiffBench_Probe:
    DESCRIPTION = "Bench only: reports device memory and ComfyUI's loaded models as JSON."
    CATEGORY = "DEADiff/bench"
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "probe"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"label": ("STRING", {"default": "probe", "tooltip": "Name of this reading."})},
            "optional": {
                "after": (ANY, {"tooltip": "Any output: the reading is taken after that node ran."}),
                "deadiff": ("DEADIFF", {"tooltip": "Also report this DEADiff file's two patchers."}),
            },
        }

    @classmethod
    def IS_CHANGED(cls, **_):
        return float("nan")  # a fresh reading every time

    def probe(self, label, after=None, deadiff=None):
        try:
            import comfy.memory_management as memory_management  # ComfyUI 0.33; absent in 0.3.75

            dynamic_vram = bool(getattr(memory_management, "aimdo_enabled", False))
        except ImportError:
            dynamic_vram = False
        device = mm.get_torch_device()
        report = {
            "label": label,
            "device": str(device),
            "dynamic_vram": dynamic_vram,
            "core_patcher": getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher).__name__,
            "loaded": [_patcher_report(p) for p in mm.loaded_models()],
        }
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            free, total = torch.cuda.mem_get_info(device)
            report.update(
                device_used_mb=round((total - free) / 2**20, 1),
                torch_allocated_mb=round(torch.cuda.memory_allocated(device) / 2**20, 1),
                torch_reserved_mb=round(torch.cuda.memory_reserved(device) / 2**20, 1),
                device_name=torch.cuda.get_device_name(device),
            )
        if deadiff is not None:
            report["deadiff"] = {
                "encoder": _patcher_report(deadiff.encoder_patcher),
                "site_projections": _patcher_report(deadiff.site_projections_patcher),
            }
        return {"ui": {"deadiff_bench": [json.dumps(report)]}}


class _FloorPatch:
    """Append `extra` precomputed zero keys/values (one cat each) and call ComfyUI's optimized_attention."""

    def __init__(self, extra: int):
        self.extra = extra
        self._zeros = {}

    def __deepcopy__(self, memo):
        return self

    def __call__(self, q, k, v, extra_options):
        key = (k.shape[0], k.shape[2], k.device, k.dtype)
        zeros = self._zeros.get(key)
        if zeros is None:
            zeros = self._zeros[key] = torch.zeros(k.shape[0], self.extra, k.shape[2], device=k.device, dtype=k.dtype)
        return optimized_attention(
            q,
            torch.cat([k, zeros], dim=1),
            torch.cat([v, zeros], dim=1),
            extra_options["n_heads"],
            attn_precision=extra_options.get("attn_precision"),
            transformer_options=extra_options,
        )


def _deadiff_sites():
    """DEADiff's 16 sites, from the pack as ComfyUI loaded it."""
    apply = nodes.NODE_CLASS_MAPPINGS["DEADiffApply"]
    root = apply.__module__.rsplit(".", 2)[0]
    return sys.modules[root + ".deadiff_core.routing"].SITES


class DEADiffBench_Floor:
    DESCRIPTION = "Bench only: the MODEL attending to `extra` zero keys at DEADiff's 16 sites (the cost floor)."
    CATEGORY = "DEADiff/bench"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The MODEL to patch."}),
                "extra": ("INT", {"default": 16, "min": 1, "max": 256, "tooltip": "Zero keys per site."}),
            }
        }

    def patch(self, model, extra):
        patched = model.clone()
        patch = _FloorPatch(extra)
        for site in _deadiff_sites():
            patched.set_model_attn2_replace(patch, site.comfy_block[0], site.comfy_block[1], 0)
        return (patched,)


NODE_CLASS_MAPPINGS = {"DEADiffBench_Probe": DEADiffBench_Probe, "DEADiffBench_Floor": DEADiffBench_Floor}
