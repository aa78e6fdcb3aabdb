"""DEADiff Style / Content Encoder: reference images -> 16 tokens from the matching Q-Former."""

from __future__ import annotations

import torch

import comfy.model_management as mm
import comfy.utils

from ..deadiff_core.tokens import BATCH_CONCATENATE, BATCH_MODES, DEADiffTokens, image_sha256
from ..deadiff_core.preprocess import DEFAULT_PAD_COLOR, RESIZE_MODES, SQUASH, parse_color
from ..deadiff_core.sites import CONTENT, STYLE
from .sockets import CATEGORY, DEADIFF, DEADIFF_CONTENT, DEADIFF_STYLE, check_choice, io, schema


def encode(
    deadiff,
    image: torch.Tensor,
    branch: str,
    batch_mode: str = BATCH_CONCATENATE,
    resize_mode: str = SQUASH,
    pad_color: str = DEFAULT_PAD_COLOR,
    reference_mask: torch.Tensor | None = None,
) -> DEADiffTokens:
    """Run one Q-Former branch where ComfyUI loads the encoders. They stay in ComfyUI's list of loaded
    models afterwards, like its own CLIP vision and text encoders, and ComfyUI frees them when a later
    model needs the memory (with DynamicVRAM, weight by weight).

    On the CPU, where one full-size reference takes seconds, each image is encoded on its own and the
    node's progress bar moves per image (each image's tokens are then exactly the ones it gets alone);
    on a GPU the batch goes in one pass, which is what makes batches fast there."""
    device = deadiff.encoder_patcher.load_device
    mm.load_models_gpu([deadiff.encoder_patcher])
    progress = None
    if mm.is_device_cpu(device) and image.shape[0] > 1:
        progress = comfy.utils.ProgressBar(image.shape[0]).update_absolute
    tokens = deadiff.model.encoder.encode(
        image,
        branch,
        resize_mode=resize_mode,
        pad_color=pad_color,
        reference_mask=reference_mask,
        progress=progress,
        device=device,
        dtype=deadiff.encoder_dtype,
    )
    tokens = DEADiffTokens(
        branch,
        tokens.to(mm.intermediate_device(), torch.float32),
        deadiff.fingerprint,
        references=image_sha256(image),
        source_name=deadiff.name,
    )
    return tokens.batched(batch_mode)


def preview(deadiff, image: torch.Tensor, resize_mode: str, pad_color: str, reference_mask) -> torch.Tensor:
    """The 224x224 pictures the vision tower reads, as an IMAGE (unread patches dimmed)."""
    return deadiff.model.encoder.preview(
        image, resize_mode, pad_color, reference_mask, device=mm.intermediate_device()
    ).float()


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
                io.Image.Input(
                    "image",
                    tooltip=(
                        "The reference image(s). Any size: each is squashed to 224x224 without cropping, as in the "
                        "official code. A batch gives one set of 16 tokens per image; batch_mode says how they act."
                    ),
                ),
                io.Combo.Input(
                    "batch_mode",
                    options=list(BATCH_MODES),
                    default=BATCH_CONCATENATE,
                    optional=True,
                    tooltip=(
                        "For a batch of reference images: concatenate = every image's tokens act together "
                        "(16 per image); average = one set of 16, the mean; one per latent = reference i "
                        "conditions latent i (as many references as latents). One image: all the same."
                    ),
                ),
                io.Combo.Input(
                    "resize_mode",
                    options=list(RESIZE_MODES),
                    default=SQUASH,
                    optional=True,
                    tooltip=(
                        "How a reference becomes the 224x224 square the encoder reads. squash (official): the whole "
                        "image, aspect not kept; center crop: the centred square, aspect kept; pad: the whole image, "
                        "aspect kept, padded to a square with pad_color. See the preview output."
                    ),
                ),
                io.String.Input(
                    "pad_color",
                    default=DEFAULT_PAD_COLOR,
                    optional=True,
                    tooltip=("The padding colour for resize_mode = pad, as #RRGGBB (mid gray by default)."),
                ),
                io.Mask.Input(
                    "reference_mask",
                    optional=True,
                    tooltip=(
                        "Optional (not in the official method): which part of the reference counts. The Q-Former "
                        "reads each 14x14 patch by the share of it the mask covers (1 = fully, 0 = not at all), "
                        "so 'the style of this region' works without cropping. Same size as the image, or any "
                        "size (stretched to it); one mask or one per image."
                    ),
                ),
            ],
            outputs=[
                cls.SOCKET.Output(display_name=cls.BRANCH, tooltip=cls.OUTPUT_TOOLTIP),
                io.Image.Output(
                    display_name="preview",
                    tooltip=(
                        "What the encoder sees: the 224x224 picture after resize_mode, with the patches the mask "
                        "leaves out dimmed. Connect a Preview Image node."
                    ),
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, batch_mode=None, resize_mode=None, pad_color=None) -> bool | str:
        for name, value, options in (
            ("batch_mode", batch_mode, list(BATCH_MODES)),
            ("resize_mode", resize_mode, list(RESIZE_MODES)),
        ):
            checked = check_choice(name, value, options)
            if checked is not True:
                return checked
        if pad_color is not None:
            try:
                parse_color(pad_color)
            except ValueError as e:
                return str(e)
        return True

    @classmethod
    def execute(
        cls,
        deadiff,
        image,
        batch_mode=BATCH_CONCATENATE,
        resize_mode=SQUASH,
        pad_color=DEFAULT_PAD_COLOR,
        reference_mask=None,
    ) -> io.NodeOutput:
        tokens = encode(deadiff, image, cls.BRANCH, batch_mode, resize_mode, pad_color, reference_mask)
        return io.NodeOutput(tokens, preview(deadiff, image, resize_mode, pad_color, reference_mask))


class DEADiffStyleEncoder(_Encoder):
    NODE_ID = "DEADiffStyleEncoder"
    DISPLAY_NAME = "DEADiff Style Encoder"
    SUMMARY = (
        "Extracts the style of a reference image (colour, texture, brushwork) as 16 tokens "
        "through DEADiff's style Q-Former. Apply sends them to the fine cross-attention layers."
    )
    BRANCH = STYLE
    SOCKET = DEADIFF_STYLE
    OUTPUT_TOOLTIP = "Style tokens, one set per reference image."


class DEADiffContentEncoder(_Encoder):
    NODE_ID = "DEADiffContentEncoder"
    DISPLAY_NAME = "DEADiff Content Encoder"
    SUMMARY = (
        "Extracts the semantics of a reference image (what is in it) as 16 tokens through "
        "DEADiff's content Q-Former. Apply sends them to the coarse cross-attention layers."
    )
    BRANCH = CONTENT
    SOCKET = DEADIFF_CONTENT
    OUTPUT_TOOLTIP = "Content tokens, one set per reference image."
