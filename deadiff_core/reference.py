"""A reference as the encoders read it: the square picture the vision tower sees, which of its ViT
tokens the Q-Former reads, and a preview of both.

A reference mask says *where* in the reference the style (or content) is. It is resized to the
image, cut or padded exactly as the image is (`resize_mode`; padding counts as uncovered), resized
to the tower's input size, and averaged over each patch (14x14 pixels at 224): that is the patch's
coverage, as attention masks are resized to a layer's grid. Each ViT token then weighs its
coverage, relative to the best-covered patch, in the Q-Former's cross-attention softmax (see
QFormer): a patch the mask covers fully is read as without a mask, a half-covered one half as much,
an uncovered one not at all; the CLS token (the whole picture's summary) always keeps weight 1.
Relative weights make the mask a choice of place, not of strength: a mask painted at 0.5 everywhere
acts like no mask; style_weight / content_weight set strength. A mask that covers nothing is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .masks import resize_to_grid
from .preprocess import DEFAULT_PAD_COLOR, SQUASH, reference_pixels, to_square

PREVIEW_DIM = 0.25  # brightness of the patches the Q-Former does not read, in the preview


@dataclass(frozen=True)
class Reference:
    """pixels: (B, 3, S, S) in 0..1, what the tower reads before CLIP's normalization.
    token_weights: (B, 1 + grid^2) in 0..1, the CLS token first, or None: every token, as officially."""

    pixels: torch.Tensor
    token_weights: torch.Tensor | None
    patch_size: int

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def __getitem__(self, index: slice) -> "Reference":
        weights = None if self.token_weights is None else self.token_weights[index]
        return Reference(self.pixels[index], weights, self.patch_size)

    def pixel_weights(self) -> torch.Tensor | None:
        """(B, S, S): each pixel's patch weight (0 where no patch reads it), or None without a mask."""
        if self.token_weights is None:
            return None
        size, p = self.pixels.shape[-1], self.patch_size
        grid = size // p
        cells = self.token_weights[:, 1:].view(-1, grid, grid)
        per_pixel = cells.repeat_interleave(p, dim=1).repeat_interleave(p, dim=2)
        return F.pad(per_pixel, (0, size - grid * p, 0, size - grid * p))  # the conv never reads the rest

    def preview(self) -> torch.Tensor:
        """(B, S, S, 3) in 0..1, as a ComfyUI IMAGE: the pixels the tower reads; with a mask, each patch
        dimmed by how little the Q-Former reads it (PREVIEW_DIM where not at all, unchanged where fully)."""
        image = self.pixels
        weights = self.pixel_weights()
        if weights is not None:
            image = image * (PREVIEW_DIM + (1.0 - PREVIEW_DIM) * weights.unsqueeze(1))
        return image.movedim(1, -1)


def reference_mask_batch(mask: torch.Tensor, batch: int) -> torch.Tensor:
    """A MASK, (H, W) or (1 or batch, H, W) -> (batch, H, W) float32, NaN as 0, clamped to 0..1."""
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim != 3 or min(mask.shape) < 1:
        raise ValueError(
            f"reference_mask must be a MASK of shape (height, width) or (masks, height, width), got {tuple(mask.shape)}"
        )
    if mask.shape[0] not in (1, batch):
        raise ValueError(
            f"reference_mask has {mask.shape[0]} masks for {batch} reference images: give one mask "
            "for all of them, or one per image"
        )
    return torch.nan_to_num(mask.float(), nan=0.0).clamp(0.0, 1.0).expand(batch, -1, -1)


def token_weights(
    mask: torch.Tensor, height: int, width: int, image_size: int, patch_size: int, resize_mode: str = SQUASH
) -> torch.Tensor:
    """(B, H', W') reference mask for images of height x width -> (B, 1 + grid^2) weights of the ViT
    tokens (CLS first, then the patches row by row), as the module docstring describes."""
    batch = mask.shape[0]
    if tuple(mask.shape[-2:]) != (height, width):  # a mask of another size is stretched over the image
        mask = resize_to_grid(mask, height, width).view(batch, height, width)
    square = to_square(mask.unsqueeze(1), resize_mode, 0.0)[:, 0]
    at_input = resize_to_grid(square, image_size, image_size).view(batch, image_size, image_size)
    grid = image_size // patch_size
    read = at_input[:, : grid * patch_size, : grid * patch_size]
    coverage = read.reshape(batch, grid, patch_size, grid, patch_size).mean(dim=(2, 4)).flatten(1)
    best = coverage.amax(dim=1, keepdim=True)
    for i in range(batch):
        if best[i] <= 0:
            where = f" of reference image {i + 1}" if batch > 1 else ""
            why = (
                "is all 0"
                if mask[i].amax() <= 0
                else f"covers only what '{resize_mode}' leaves out of the square the encoder reads"
            )
            raise ValueError(
                f"reference_mask{where} {why}: the encoder would read nothing of the image. Paint the region "
                "whose style or content counts (white = read), or disconnect reference_mask to read the whole image"
            )
    patches = coverage / best
    return torch.cat([torch.ones(batch, 1, dtype=patches.dtype, device=patches.device), patches], dim=1)


def prepare_reference(
    images: torch.Tensor,
    image_size: int,
    patch_size: int,
    resize_mode: str = SQUASH,
    pad_color=DEFAULT_PAD_COLOR,
    reference_mask: torch.Tensor | None = None,
) -> Reference:
    """(B, H, W, C) images in 0..1 (and an optional MASK) -> the Reference the encoders read."""
    pixels = reference_pixels(images, image_size, resize_mode, pad_color)
    weights = None
    if reference_mask is not None:
        height, width = images.shape[-3], images.shape[-2]
        mask = reference_mask_batch(reference_mask.to(pixels.device), pixels.shape[0])
        weights = token_weights(mask, height, width, image_size, patch_size, resize_mode)
    return Reference(pixels, weights, patch_size)
