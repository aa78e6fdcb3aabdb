"""DEADiff Style / Content Encoder: reference images -> 16 tokens from the matching Q-Former."""
from __future__ import annotations

import torch

import comfy.model_management as mm

from ..deadiff_core.embedding import BATCH_CONCATENATE, BATCH_MODES, DEADiffTokens, image_sha256
from ..deadiff_core.routing import CONTENT, STYLE
from .sockets import CATEGORY, DEADIFF, DEADIFF_CONTENT, DEADIFF_STYLE, check_choice, io, schema


def encode(deadiff, image: torch.Tensor, branch: str, batch_mode: str = BATCH_CONCATENATE) -> DEADiffTokens:
    """Run one Q-Former branch where ComfyUI loads the encoders. They stay in ComfyUI's list of loaded
    models afterwards, like its own CLIP vision and text encoders, and ComfyUI frees them when a later
    model needs the memory (with DynamicVRAM, weight by weight)."""
    mm.load_models_gpu([deadiff.encoder_patcher])
    tokens = deadiff.model.encoder.encode(image, branch, device=deadiff.encoder_patcher.load_device,
                                          dtype=deadiff.encoder_dtype)
    tokens = DEADiffTokens(branch, tokens.to(mm.intermediate_device(), torch.float32), deadiff.fingerprint,
                           references=image_sha256(image), source_name=deadiff.name)
    return tokens.batched(batch_mode)


class _Encoder(io.ComfyNode):
    """Both encoders; a subclass names its branch, socket type and texts."""
    NODE_ID: str
    DISPLAY_NAME: str
    SUMMARY: str
    BRANCH: str
    SOCKET: type
    OUTPUT_TOOLTIP: str

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id=cls.NODE_ID,
            display_name=cls.DISPLAY_NAME,
            category=CATEGORY,
            description=cls.SUMMARY,
            search_aliases=[f"{cls.BRANCH} reference", f"{cls.BRANCH} image", "reference image", "Q-Former"],
            inputs=[
                DEADIFF.Input("deadiff", tooltip="From Load DEADiff Model."),
                io.Image.Input("image", tooltip=(
                    "The reference image(s). Any size: each is squashed to 224x224 without cropping, as in the "
                    "official code. A batch gives one set of 16 tokens per image; batch_mode says how they act.")),
                io.Combo.Input("batch_mode", options=list(BATCH_MODES), default=BATCH_CONCATENATE, optional=True,
                               tooltip=(
                    "For a batch of reference images: concatenate = every image's tokens act together "
                    "(16 per image); average = one set of 16, the mean; one per latent = reference i "
                    "conditions latent i (as many references as latents). One image: all the same.")),
            ],
            outputs=[cls.SOCKET.Output(display_name=cls.BRANCH, tooltip=cls.OUTPUT_TOOLTIP)],
        )

    @classmethod
    def validate_inputs(cls, batch_mode=None) -> bool | str:
        return check_choice("batch_mode", batch_mode, list(BATCH_MODES))

    @classmethod
    def execute(cls, deadiff, image, batch_mode=BATCH_CONCATENATE) -> io.NodeOutput:
        return io.NodeOutput(encode(deadiff, image, cls.BRANCH, batch_mode))


class DEADiffStyleEncoder(_Encoder):
    NODE_ID = "DEADiffStyleEncoder"
    DISPLAY_NAME = "DEADiff Style Encoder"
    SUMMARY = ("Extracts the style of a reference image (colour, texture, brushwork) as 16 tokens "
               "through DEADiff's style Q-Former. Apply sends them to the fine cross-attention layers.")
    BRANCH = STYLE
    SOCKET = DEADIFF_STYLE
    OUTPUT_TOOLTIP = "Style tokens, one set per reference image."


class DEADiffContentEncoder(_Encoder):
    NODE_ID = "DEADiffContentEncoder"
    DISPLAY_NAME = "DEADiff Content Encoder"
    SUMMARY = ("Extracts the semantics of a reference image (what is in it) as 16 tokens through "
               "DEADiff's content Q-Former. Apply sends them to the coarse cross-attention layers.")
    BRANCH = CONTENT
    SOCKET = DEADIFF_CONTENT
    OUTPUT_TOOLTIP = "Content tokens, one set per reference image."
