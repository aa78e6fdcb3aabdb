"""Masks as the attention sees them: one weight in 0..1 per query position of a site's grid.

A MASK comes at image (or any) resolution; every site attends on its own latent grid (64, 32, 16
or 8 cells across at 512 px, and any aspect), so the mask is resized to each grid exactly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def as_mask_batch(mask: torch.Tensor) -> torch.Tensor:
    """ComfyUI MASKs are (H, W) or (B, H, W); always give (B, H, W) float32."""
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim != 3 or mask.shape[-1] < 1 or mask.shape[-2] < 1 or mask.shape[0] < 1:
        raise ValueError(
            f"attn_mask must be a MASK of shape (height, width) or (masks, height, width), got {tuple(mask.shape)}"
        )
    return mask.float()


def resize_to_grid(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, H, W) mask -> (B, height * width) weights in 0..1, row-major like the site's queries.

    Shrinking averages the mask over each grid cell (the share of the cell it covers, so a thin
    stripe keeps its share and two masks that split the image still split every grid); enlarging
    is bilinear. Values outside 0..1 are clamped and NaN counts as 0.
    """
    mask = torch.nan_to_num(mask.float(), nan=0.0).clamp(0.0, 1.0).unsqueeze(1)
    source = tuple(mask.shape[-2:])
    upper = (max(source[0], height), max(source[1], width))
    if upper != source:
        mask = F.interpolate(mask, size=upper, mode="bilinear", align_corners=False)
    if upper != (height, width):
        mask = F.interpolate(mask, size=(height, width), mode="area")
    return mask.flatten(1).clamp(0.0, 1.0)
