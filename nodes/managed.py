"""A loaded DEADiff file whose weights ComfyUI's memory management owns.

Built the way ComfyUI builds its own extra models (CLIP vision, model patches): every layer is one of
ComfyUI's `comfy.ops.manual_cast` layers, which take their weights to the input's device and dtype
when called, and each part is wrapped in the ModelPatcher class ComfyUI itself prefers. On ComfyUI
0.33 with DynamicVRAM (on by default on NVIDIA GPUs) that is the dynamic patcher: weights stay in
system memory and are streamed into VRAM as the layers run, and ComfyUI frees them when it needs the
space. Elsewhere (0.3.75, --cpu, no DynamicVRAM) it is the classic ModelPatcher.

Two patchers: the encoders (vision tower + Q-Formers, about 1.4 GB in fp16), loaded by the encoder
nodes; the 32 per-site projections (tens of MB), loaded with the UNet during sampling because the
attention patch hands them to ComfyUI through `models()`. Nothing here unloads a model by hand:
ComfyUI unloads (or, with DynamicVRAM, evicts) them on demand, as it does its own.
"""

from __future__ import annotations

import os

import torch

import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops

from ..deadiff_core import DEADiffModel, load_deadiff

# ComfyUI's cast-on-call layers (the ones its CLIP vision and model patches use)
OPERATIONS = comfy.ops.manual_cast


def preferred_patcher_class() -> type:
    """The ModelPatcher class ComfyUI builds its own models with.

    ComfyUI 0.33 names it `comfy.model_patcher.CoreModelPatcher`: main.py points it at the DynamicVRAM
    patcher when DynamicVRAM is on (and that patcher falls back to the classic one for a CPU device).
    Older ComfyUIs (0.3.75) have no such name: the classic ModelPatcher. Looked up when a file is
    loaded, after main.py has made its choice.
    """
    return getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)


def compute_dtype(device: torch.device) -> torch.dtype:
    """fp32 on the CPU (the official math, exactly); the fastest supported half type elsewhere."""
    if mm.is_device_cpu(device):
        return torch.float32
    if mm.should_use_fp16(device, prioritize_performance=False):
        return torch.float16
    if mm.should_use_bf16(device, prioritize_performance=False):
        return torch.bfloat16
    return torch.float32


class ManagedDEADiff:
    """What the DEADIFF socket carries."""

    def __init__(self, model: DEADiffModel, name: str):
        self.model = model
        self.name = name
        self.config = model.config
        patcher = preferred_patcher_class()
        encoder_device = mm.text_encoder_device()
        self.encoder_dtype = compute_dtype(encoder_device)
        model.encoder.to(self.encoder_dtype).eval()
        self.encoder_patcher = patcher(
            model.encoder, load_device=encoder_device, offload_device=mm.text_encoder_offload_device()
        )
        unet_device = mm.get_torch_device()
        model.site_projections.to(compute_dtype(unet_device)).eval()
        self.site_projections_patcher = patcher(
            model.site_projections, load_device=unet_device, offload_device=mm.unet_offload_device()
        )
        self.fingerprint = model.fingerprint

    @classmethod
    def from_file(cls, path: str, progress=None) -> "ManagedDEADiff":
        """Read straight into the encoders' compute dtype (no float32 detour on a GPU), in ComfyUI's layers.
        progress(done, total) follows the tensor records read."""
        model = load_deadiff(
            path, dtype=compute_dtype(mm.text_encoder_device()), progress=progress, operations=OPERATIONS
        )
        return cls(model, os.path.basename(path))

    def get_models(self) -> list:
        """Both patchers. ComfyUI 0.33 asks each node output for get_models() (as it does a ControlNet's)
        to mark the models the running prompt uses; with DynamicVRAM it frees other models' pinned host
        memory before theirs."""
        return [self.encoder_patcher, self.site_projections_patcher]

    def __repr__(self) -> str:
        return f"ManagedDEADiff({self.name})"
