"""Reference images -> CLIP pixels, as the official code prepares them (docs/design.md §2), plus two
ways to keep the aspect ratio.

The official code squashes every reference to 224x224 (aspect not kept); that is `squash`, the
default, and its output is unchanged. `center crop` keeps the largest centred square and `pad`
places the whole image in a square of a chosen colour; both then resize that square exactly as
`squash` resizes the image, so a square image gives the same pixels in all three modes.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

SQUASH, CENTER_CROP, PAD = "squash", "center crop", "pad"
RESIZE_MODES = (SQUASH, CENTER_CROP, PAD)
DEFAULT_PAD_COLOR = "#808080"  # mid gray: neither adds light nor dark to the style


def to_rgb(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) in 0..1 with C = 1 (gray), 3 (RGB) or 4 (RGBA, alpha dropped) -> (B, H, W, 3)."""
    if images.ndim == 3:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"expected images as (batch, height, width, channels) with 1, 3 or 4 channels, "
            f"got shape {tuple(images.shape)}"
        )
    if min(images.shape[:3]) < 1:
        raise ValueError(
            f"the reference image is empty (batch, height, width = {tuple(images.shape[:3])}); "
            "connect an image of at least 1x1 pixel"
        )
    if images.shape[-1] == 1:
        return images.expand(-1, -1, -1, 3)
    return images[..., :3]


def parse_color(color) -> tuple[float, float, float]:
    """A colour as "#RRGGBB" / "RRGGBB" / "#RGB", an int 0xRRGGBB, or three floats in 0..1 -> (r, g, b) in 0..1."""
    if isinstance(color, str):
        text = color.strip().lstrip("#")
        if re.fullmatch(r"[0-9a-fA-F]{3}", text):
            text = "".join(c * 2 for c in text)
        if not re.fullmatch(r"[0-9a-fA-F]{6}", text):
            raise ValueError(f"pad_color must be a hex colour such as #808080 (red, green, blue), got {color!r}")
        color = int(text, 16)
    if isinstance(color, int) and not isinstance(color, bool):
        if not 0 <= color <= 0xFFFFFF:
            raise ValueError(f"pad_color as a number must be 0xRRGGBB (0 to 16777215), got {color}")
        return tuple(((color >> shift) & 0xFF) / 255.0 for shift in (16, 8, 0))
    try:
        rgb = tuple(float(c) for c in color)
    except TypeError:
        rgb = ()
    if len(rgb) != 3 or not all(0.0 <= c <= 1.0 for c in rgb):
        raise ValueError(f"pad_color must be a hex colour such as #808080, or three numbers in 0..1, got {color!r}")
    return rgb


def square_offsets(height: int, width: int, resize_mode: str) -> tuple[int, int, int]:
    """(side, top, left) of the square a mode makes: `center crop` cuts the square at (top, left) out of
    the image; `pad` puts the image at (top, left) inside the square. Odd leftovers go to the bottom/right."""
    if resize_mode == CENTER_CROP:
        side = min(height, width)
        return side, (height - side) // 2, (width - side) // 2
    if resize_mode == PAD:
        side = max(height, width)
        return side, (side - height) // 2, (side - width) // 2
    raise ValueError(f"resize_mode must be one of {', '.join(RESIZE_MODES)}, got {resize_mode!r}")


def to_square(x: torch.Tensor, resize_mode: str, fill) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, side, side) by `resize_mode` (`squash` returns x itself); `fill` is the pad value
    (a number, or one per channel). Images and reference masks go through this same function."""
    if resize_mode == SQUASH:
        return x
    height, width = x.shape[-2:]
    side, top, left = square_offsets(height, width, resize_mode)
    if resize_mode == CENTER_CROP:
        return x[..., top : top + side, left : left + side]
    fill = torch.as_tensor(fill, dtype=x.dtype, device=x.device).reshape(-1, 1, 1)
    canvas = fill.expand(x.shape[1], side, side).repeat(x.shape[0], 1, 1, 1)
    canvas[..., top : top + height, left : left + width] = x
    return canvas


def reference_pixels(
    images: torch.Tensor, image_size: int, resize_mode: str = SQUASH, pad_color=DEFAULT_PAD_COLOR
) -> torch.Tensor:
    """The picture the vision tower reads, before CLIP's normalization: the image made square by
    `resize_mode`, resized to image_size^2 with antialiased bicubic and clamped to 0..1 as PIL's 8-bit
    output is. -> (B, 3, S, S), float32."""
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {', '.join(RESIZE_MODES)}, got {resize_mode!r}")
    fill = parse_color(pad_color) if resize_mode == PAD else None
    pixels = to_rgb(images).float().movedim(-1, 1)
    low, high = torch.aminmax(pixels)  # NaN and Inf show in the extremes: one pass, no full-size mask
    if not bool(torch.isfinite(low) & torch.isfinite(high)):
        raise ValueError(
            "the reference image has NaN or infinite pixel values: the node that made it produced "
            "invalid numbers (for example a VAE Decode that overflowed in fp16); fix that node or "
            "use another image"
        )
    pixels = to_square(pixels, resize_mode, fill)
    return F.interpolate(
        pixels, size=(image_size, image_size), mode="bicubic", antialias=True, align_corners=False
    ).clamp(0.0, 1.0)


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) in 0..1 -> CLIP's input: minus its mean, over its std, per channel."""
    mean = torch.tensor(CLIP_MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - mean) / std


def preprocess(
    images: torch.Tensor, image_size: int, resize_mode: str = SQUASH, pad_color=DEFAULT_PAD_COLOR
) -> torch.Tensor:
    """Squash (by default: no crop, aspect not kept) to image_size^2 with antialiased bicubic, clamp to
    0..1 as PIL's 8-bit output is, then normalize with CLIP's mean and std. -> (B, 3, S, S), float32."""
    return normalize(reference_pixels(images, image_size, resize_mode, pad_color))
