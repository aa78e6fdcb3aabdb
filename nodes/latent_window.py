"""Which latents of the whole batch one UNet call sees, when sampling runs on context windows.

ComfyUI's core context windows (the "Context Windows (Manual)" node, comfy/context_windows.py) and
AnimateDiff-Evolved's sliding contexts run the UNet on a subset of a long latent batch. Inputs given
one per latent (references encoded "one per latent", masks, negative references) must then follow
that subset: latent i keeps reference i whichever window it is sampled in.

Both tell the attention patches which latents they see, through the options ComfyUI hands every
patch (the `transformer_options` of the call):

- ComfyUI puts the window object under "context_window": its `index_list` holds the positions in the
  whole batch; `dim` is the dimension it slices (0, the batch, for SD1.5 image batches; video models
  use another one and leave the batch alone). Newer ComfyUI versions may put one frame before the
  window (`causal_anchor_index`, the frame just before it) and give the whole length as `total_frames`.
- AnimateDiff-Evolved puts "ad_params": {"full_length", "context_length", "sub_idxs"}, with
  `sub_idxs` None when it is not sliding.

A window whose size does not match the batch the patch sees is ignored (the call is not windowed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class LatentWindow:
    indices: tuple  # position in the whole latent batch of each latent of this call
    full_length: Optional[int]  # the whole batch, when the windowing says it


def latent_window(extra_options: dict, chunk: int) -> Optional[LatentWindow]:
    """The window this call samples, or None when it sees the whole latent batch.
    `chunk` is the number of latents per cond/uncond chunk of this call."""
    found = _animatediff_window(extra_options) or _comfy_window(extra_options)
    if found is None or len(found.indices) != chunk:
        return None
    return found


def _animatediff_window(extra_options: dict) -> Optional[LatentWindow]:
    params = extra_options.get("ad_params")
    if not isinstance(params, dict) or params.get("sub_idxs") is None:
        return None
    full = params.get("full_length")
    return LatentWindow(tuple(int(i) for i in params["sub_idxs"]), int(full) if full else None)


def _comfy_window(extra_options: dict) -> Optional[LatentWindow]:
    window = extra_options.get("context_window")
    index_list = getattr(window, "index_list", None)
    if index_list is None or getattr(window, "dim", 0) != 0:
        return None
    indices = [int(i) for i in index_list]
    anchor = getattr(window, "causal_anchor_index", None)
    if anchor is not None and anchor >= 0:
        indices = [int(anchor)] + indices
    full = getattr(window, "total_frames", 0)
    return LatentWindow(tuple(indices), int(full) if full else None)


def per_latent(tensor: torch.Tensor, chunk: int, what: str, window: Optional[LatentWindow] = None) -> torch.Tensor:
    """`chunk` items, one per latent of this call, from one item for every latent or one per latent
    of the whole batch (selected by the window's indices when sampling runs on windows)."""
    given = tensor.shape[0]
    if given == 1:
        return tensor.expand(chunk, *tensor.shape[1:])
    if window is None:
        if given == chunk:
            return tensor
        raise ValueError(
            f"DEADiff {what}: {given} given, one per latent image, but the latent batch has "
            f"{chunk} images. Give one for all images or exactly one per image (for reference images, "
            "or set the encoder's batch_mode to concatenate or average)."
        )
    if window.full_length is not None:
        wrong, size = given != window.full_length, f"{window.full_length}"
    else:  # the window does not say how long the whole batch is: it holds at least the largest index
        wrong, size = given <= max(window.indices), f"at least {max(window.indices) + 1}"
    if wrong:
        raise ValueError(
            f"DEADiff {what}: {given} given, one per latent image, but the latent batch has {size} "
            f"images (sampled in context windows of {chunk}). Give one for all images or exactly one "
            "per image of the whole batch (for reference images, or set the encoder's batch_mode to "
            "concatenate or average)."
        )
    return tensor[list(window.indices)]
