"""DEADiff Style / Content Encoder: reference images -> 16 tokens from the matching Q-Former."""
from __future__ import annotations

import torch

import comfy.model_management as mm

from ..deadiff_core.embedding import BATCH_CONCATENATE, BATCH_MODES, DEADiffTokens, image_sha256
from ..deadiff_core.routing import CONTENT, STYLE
from .loader import CATEGORY


def encode(deadiff, image: torch.Tensor, branch: str, batch_mode: str = BATCH_CONCATENATE) -> DEADiffTokens:
    """Run one Q-Former branch on the device ComfyUI picks, then hand the VRAM back."""
    mm.load_models_gpu([deadiff.encoder_patcher])
    try:
        tokens = deadiff.model.encoder.encode(image.to(deadiff.encoder_patcher.load_device), branch)
    finally:
        deadiff.offload_encoder()
    tokens = DEADiffTokens(branch, tokens.to(mm.intermediate_device(), torch.float32), deadiff.fingerprint,
                           references=image_sha256(image), source_name=deadiff.name)
    return tokens.batched(batch_mode)


class _Encoder:
    BRANCH: str
    CATEGORY = CATEGORY
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "deadiff": ("DEADIFF", {"tooltip": "From Load DEADiff Model."}),
            "image": ("IMAGE", {"tooltip": "The reference image(s). Any size: each is squashed to 224x224 "
                                           "without cropping, as in the official code. A batch gives one "
                                           "set of 16 tokens per image; batch_mode says how they act."}),
        }, "optional": {
            "batch_mode": (list(BATCH_MODES), {
                "default": BATCH_CONCATENATE,
                "tooltip": "For a batch of reference images: concatenate = every image's tokens act together "
                           "(16 per image); average = one set of 16, the mean; one per latent = reference i "
                           "conditions latent i (as many references as latents). One image: all the same."}),
        }}

    def encode(self, deadiff, image, batch_mode=BATCH_CONCATENATE):
        return (encode(deadiff, image, self.BRANCH, batch_mode),)


class DEADiffStyleEncoder(_Encoder):
    DESCRIPTION = ("Extracts the style of a reference image (colour, texture, brushwork) as 16 tokens "
                   "through DEADiff's style Q-Former. Apply sends them to the fine cross-attention layers.")
    BRANCH = STYLE
    RETURN_TYPES = ("DEADIFF_STYLE",)
    RETURN_NAMES = ("style",)
    OUTPUT_TOOLTIPS = ("Style tokens, one set per reference image.",)


class DEADiffContentEncoder(_Encoder):
    DESCRIPTION = ("Extracts the semantics of a reference image (what is in it) as 16 tokens through "
                   "DEADiff's content Q-Former. Apply sends them to the coarse cross-attention layers.")
    BRANCH = CONTENT
    RETURN_TYPES = ("DEADIFF_CONTENT",)
    RETURN_NAMES = ("content",)
    OUTPUT_TOOLTIPS = ("Content tokens, one set per reference image.",)
