"""Is this MODEL one DEADiff can condition? Refuse clearly before sampling, never mid-way."""

from __future__ import annotations

import comfy.supported_models
from comfy.ldm.modules.attention import SpatialTransformer

from ..deadiff_core.sites import SITES, Site


def site_attention(unet, site: Site):
    """The attn2 module at `site` in ComfyUI's UNet, or None when the block has no transformer."""
    kind, number = site.comfy_block
    blocks = {
        "input": getattr(unet, "input_blocks", None),
        "middle": None,
        "output": getattr(unet, "output_blocks", None),
    }[kind]
    block = (
        getattr(unet, "middle_block", None)
        if kind == "middle"
        else (blocks[number] if blocks is not None and number < len(blocks) else None)
    )
    if block is None:
        return None
    for layer in block:
        if isinstance(layer, SpatialTransformer) and len(layer.transformer_blocks) > 0:
            return getattr(layer.transformer_blocks[0], "attn2", None)
    return None


def check_model(model, deadiff) -> None:
    """The MODEL must be SD1.x-family with the 16 sites at the widths the DEADiff file was made for."""
    model_config = model.model.model_config
    family = type(model_config).__name__
    if not isinstance(model_config, comfy.supported_models.SD15):
        raise ValueError(
            f"DEADiff conditions SD1.x models (it was trained on SD1.5), but this MODEL is {family}. "
            "Connect the MODEL of an SD1.5 checkpoint (or a fine-tune of it) to Apply Disentangled Conditioning."
        )
    unet = model.get_model_object("diffusion_model")
    widths = deadiff.config.site_widths
    context_dim = deadiff.config.context_dim
    for site in SITES:
        attn2 = site_attention(unet, site)
        if attn2 is None:
            raise ValueError(
                f"This {family} MODEL has no cross-attention at {site.comfy_block} "
                f"({site.ldm_block}); DEADiff needs all 16 SD1.5 sites."
            )
        width = attn2.to_q.out_features
        if width != widths[site.name] or attn2.to_k.in_features != context_dim:
            raise ValueError(
                f"{deadiff.name} was made for a UNet with width {widths[site.name]} and a "
                f"{context_dim}-wide text context at {site.comfy_block}, but this MODEL has width {width} "
                f"and a {attn2.to_k.in_features}-wide context there. Use the SD1.5 checkpoint the DEADiff "
                "file belongs to."
            )
