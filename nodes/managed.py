"""A loaded DEADiff file whose weights ComfyUI's memory management owns.

Two ModelPatchers: the encoders (vision tower + Q-Formers, about 1.4 GB in fp16) are loaded only
while encoding; the 32 per-site projections (tens of MB) travel with the UNet during sampling
because the attention patch hands them to ComfyUI through `models()`.
"""
from __future__ import annotations

import os

import torch

import comfy.model_management as mm
import comfy.model_patcher

from ..deadiff_core import DEADiffModel, load_deadiff


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
        encoder_device = mm.text_encoder_device()
        model.encoder.to(compute_dtype(encoder_device)).eval()
        self.encoder_patcher = comfy.model_patcher.ModelPatcher(
            model.encoder, load_device=encoder_device, offload_device=mm.text_encoder_offload_device())
        unet_device = mm.get_torch_device()
        model.injection.to(compute_dtype(unet_device)).eval()
        self.injection_patcher = comfy.model_patcher.ModelPatcher(
            model.injection, load_device=unet_device, offload_device=mm.unet_offload_device())
        self.fingerprint = model.fingerprint

    @classmethod
    def from_file(cls, path: str) -> "ManagedDEADiff":
        """Read straight into the encoders' compute dtype (no float32 detour on a GPU)."""
        return cls(load_deadiff(path, dtype=compute_dtype(mm.text_encoder_device())), os.path.basename(path))

    def offload_encoder(self) -> None:
        """Give the encoders' VRAM back right after encoding (they are not needed while sampling)."""
        for i, loaded in enumerate(mm.current_loaded_models):
            if loaded.model is self.encoder_patcher:
                mm.current_loaded_models.pop(i).model_unload()
                break

    def __repr__(self) -> str:
        return f"ManagedDEADiff({self.name})"
