"""Reference images -> CLIP pixels, as the official code prepares them (docs/design.md §2)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) in 0..1 with C = 1 (gray), 3 (RGB) or 4 (RGBA, alpha dropped) -> (B, H, W, 3)."""
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected images as (batch, height, width, channels) with 1, 3 or 4 channels, "
                         f"got shape {tuple(images.shape)}")
    if min(images.shape[:3]) < 1:
        raise ValueError(f"the reference image is empty (batch, height, width = {tuple(images.shape[:3])}); "
                         "connect an image of at least 1x1 pixel")
    if images.shape[-1] == 1:
        return images.expand(-1, -1, -1, 3)
    return images[..., :3]


def preprocess(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Squash (no crop, aspect not kept) to image_size^2 with antialiased bicubic, clamp to 0..1 as
    PIL's 8-bit output is, then normalize with CLIP's mean and std. -> (B, 3, S, S), float32."""
    pixels = to_rgb(images).float().movedim(-1, 1)
    low, high = torch.aminmax(pixels)  # NaN and Inf show in the extremes: one pass, no full-size mask
    if not bool(torch.isfinite(low) & torch.isfinite(high)):
        raise ValueError("the reference image has NaN or infinite pixel values: the node that made it produced "
                         "invalid numbers (for example a VAE Decode that overflowed in fp16); fix that node or "
                         "use another image")
    pixels = F.interpolate(pixels, size=(image_size, image_size), mode="bicubic", antialias=True,
                           align_corners=False).clamp(0.0, 1.0)
    mean = torch.tensor(CLIP_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - mean) / std
