"""Apply Disentangled Conditioning: style tokens to the fine layers, content tokens to the coarse ones."""

from __future__ import annotations

from ..deadiff_core.masks import as_mask_batch
from ..deadiff_core.sites import CONTENT, SITES, STYLE
from ..deadiff_core.routing import Routing
from . import composition
from .attention_patch import DEADiffSitePatch, Contribution
from .compatibility import check_model
from .sockets import CATEGORY, DEADIFF, DEADIFF_CONTENT, DEADIFF_ROUTING, DEADIFF_STYLE, io, schema

WINDOW = (0.0, 1.0)  # start_at and end_at: fractions of the sampling schedule


def _weight_input(branch: str) -> io.Float.Input:
    return io.Float.Input(
        f"{branch}_weight",
        default=1.0,
        min=-2.0,
        max=5.0,
        step=0.05,
        tooltip=(
            f"Strength of the {branch} tokens (scales their keys and values, the official "
            "img_weight). 1.0 is the official default; 0.5-1.2 is the useful range. Equal "
            "style and content weights w reproduce the official img_weight = w."
        ),
    )


def _check_window(start_at, end_at) -> bool | str:
    """start_at and end_at in 0..1 (in ComfyUI's words) and start_at <= end_at; None: linked, checked at run."""
    low, high = WINDOW
    for name, value in (("start_at", start_at), ("end_at", end_at)):
        if value is not None and value < low:
            return f"{name}: Value {value} smaller than min of {low}"
        if value is not None and value > high:
            return f"{name}: Value {value} bigger than max of {high}"
    if start_at is not None and end_at is not None and start_at > end_at:
        return f"start_at ({start_at}) is after end_at ({end_at}): the tokens would never act. Set start_at <= end_at."
    return True


def _existing_patch(model, site):
    """DEADiff's chain at this site, or the other pack's patch under DEADiff's key (see nodes/composition.py)."""
    return composition.existing_patch(model, site)


def _check_tokens(tokens, branch: str, deadiff, input_name: str):
    if tokens is None:
        return None
    if tokens.branch != branch:
        raise ValueError(
            f"The {input_name} input got {tokens.branch} tokens: connect a DEADiff "
            f"{branch.capitalize()} Encoder (or a {branch} mix / saved {branch}) to it."
        )
    if tokens.width != deadiff.config.context_dim:
        raise ValueError(
            f"These {branch} tokens are {tokens.width} wide but {deadiff.name} expects "
            f"{deadiff.config.context_dim}: encode the reference with the same DEADiff file."
        )
    if tokens.source != deadiff.fingerprint:
        raise ValueError(
            f"The {input_name} tokens were made with another DEADiff file "
            f"({tokens.source_name or 'unknown'}, weights {tokens.source}) than the one connected here "
            f"({deadiff.name}, weights {deadiff.fingerprint}): encode the reference with {deadiff.name}."
        )
    return tokens.for_attention()


def _check_negative(positive, negative, branch: str, deadiff):
    """The negative pass runs in the same batch as the positive one, so both need as many tokens."""
    if negative is None:
        return
    count = deadiff.config.num_query_tokens if positive is None else positive.shape[1]
    if negative.shape[1] != count:
        raise ValueError(
            f"negative_{branch} has {negative.shape[1]} tokens but the {branch} side has {count}: "
            f"give the negative reference as many images (or the same batch_mode) as the {branch} one."
        )


class DEADiffApply(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="DEADiffApply",
            display_name="Apply Disentangled Conditioning",
            category=CATEGORY,
            description=(
                "Patches the MODEL's cross-attention with DEADiff's disentangled conditioning: style tokens are "
                "added to the 11 fine (high-resolution) layers, content tokens to the 5 coarse ones, next to the "
                "prompt's tokens. Leave content unconnected for the official style transfer. The input MODEL is "
                "not changed; chain several Apply nodes to combine references (e.g. with masks)."
            ),
            search_aliases=[
                "DEADiff",
                "apply DEADiff",
                "style transfer",
                "reference style",
                "image prompt",
                "disentangled",
            ],
            inputs=[
                io.Model.Input("model", tooltip="An SD1.5 MODEL (your checkpoint, after any LoRA)."),
                DEADIFF.Input("deadiff", tooltip="From Load DEADiff Model."),
                _weight_input(STYLE),
                _weight_input(CONTENT),
                io.Float.Input(
                    "start_at",
                    default=0.0,
                    min=WINDOW[0],
                    max=WINDOW[1],
                    step=0.01,
                    tooltip=(
                        "Fraction of the sampling schedule at which the tokens start to act "
                        "(0 = from the first step, official)."
                    ),
                ),
                io.Float.Input(
                    "end_at",
                    default=1.0,
                    min=WINDOW[0],
                    max=WINDOW[1],
                    step=0.01,
                    tooltip=(
                        "Fraction of the schedule after which they stop (1 = until the end, "
                        "official). Ending early keeps more of the prompt's own look."
                    ),
                ),
                DEADIFF_STYLE.Input(
                    "style",
                    optional=True,
                    tooltip=(
                        "From DEADiff Style Encoder. Unconnected: the style layers get "
                        "16 zero tokens, as the official 'content' mode."
                    ),
                ),
                DEADIFF_CONTENT.Input(
                    "content",
                    optional=True,
                    tooltip=(
                        "From DEADiff Content Encoder. Unconnected: the content "
                        "layers get 16 zero tokens, as the official 'style' mode."
                    ),
                ),
                io.Mask.Input(
                    "attn_mask",
                    optional=True,
                    tooltip=(
                        "Where the reference acts (1) and where the image follows the prompt "
                        "alone (0). Any size; one mask or one per latent."
                    ),
                ),
                DEADIFF_STYLE.Input(
                    "negative_style",
                    optional=True,
                    tooltip=(
                        "Optional (not in the official method): a style to steer away from. Its tokens "
                        "replace the zero tokens of the negative prompt's pass at the style layers."
                    ),
                ),
                DEADIFF_CONTENT.Input(
                    "negative_content",
                    optional=True,
                    tooltip=(
                        "Optional (not in the official method): content to steer away from, in the "
                        "negative pass at the content layers."
                    ),
                ),
                DEADIFF_ROUTING.Input(
                    "routing",
                    optional=True,
                    tooltip=(
                        "Optional, for research: which layers get which tokens, from DEADiff Layer Routing. "
                        "Unconnected: the official split (style to 11 fine layers, content to 5 coarse)."
                    ),
                ),
            ],
            outputs=[
                io.Model.Output(tooltip="The MODEL with DEADiff's attention patch; sample it with your own prompt.")
            ],
        )

    @classmethod
    def validate_inputs(cls, start_at=None, end_at=None) -> bool | str:
        """A window that never opens is refused when the prompt is queued, not after the models loaded."""
        return _check_window(start_at, end_at)

    @classmethod
    def execute(
        cls,
        model,
        deadiff,
        style_weight,
        content_weight,
        start_at,
        end_at,
        style=None,
        content=None,
        attn_mask=None,
        negative_style=None,
        negative_content=None,
        routing=None,
    ) -> io.NodeOutput:
        window = _check_window(start_at, end_at)  # again: linked values are only known now
        if window is not True:
            raise ValueError(window)
        check_model(model, deadiff)
        sampling = model.get_model_object("model_sampling")
        tokens = {
            STYLE: _check_tokens(style, STYLE, deadiff, "style"),
            CONTENT: _check_tokens(content, CONTENT, deadiff, "content"),
        }
        negative = {
            STYLE: _check_tokens(negative_style, STYLE, deadiff, "negative_style"),
            CONTENT: _check_tokens(negative_content, CONTENT, deadiff, "negative_content"),
        }
        for branch in (STYLE, CONTENT):
            _check_negative(tokens[branch], negative[branch], branch, deadiff)
        contribution = Contribution(
            deadiff,
            tokens=tokens,
            negative=negative,
            weights={STYLE: float(style_weight), CONTENT: float(content_weight)},
            routing=routing if routing is not None else Routing.official(),
            sigma_start=float(sampling.percent_to_sigma(start_at)),
            sigma_end=float(sampling.percent_to_sigma(end_at)),
            mask=None if attn_mask is None else as_mask_batch(attn_mask),
        )
        patched = model.clone()
        for site in SITES:
            existing = _existing_patch(patched, site)
            if existing is None:
                patch = DEADiffSitePatch(site, (contribution,))
            elif isinstance(existing, DEADiffSitePatch):
                patch = existing.with_contribution(contribution)
            else:  # another pack's patch under the key DEADiff takes: kept, and combined when sampling starts
                patch = DEADiffSitePatch(site, (contribution,), displaced=existing)
            patched.set_model_attn2_replace(patch, site.comfy_block[0], site.comfy_block[1], 0)
        composition.register(patched)
        return io.NodeOutput(patched)
