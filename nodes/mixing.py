"""DEADiff Mix Styles / Mix Contents: several references' tokens as one (BLIP-Diffusion's blend)."""

from __future__ import annotations

from ..deadiff_core.tokens import MIX_MODES, WEIGHTED_SUM, mix
from ..deadiff_core.sites import CONTENT, STYLE
from .sockets import CATEGORY, DEADIFF_CONTENT, DEADIFF_STYLE, check_choice, io, schema

INPUTS = 4


class _Mix(io.ComfyNode):
    """Both mix nodes; a subclass names its branch, socket type and texts."""

    NODE_ID: str
    DISPLAY_NAME: str
    SUMMARY: str
    BRANCH: str
    SOCKET: type
    OUTPUT_TOOLTIP: str

    @classmethod
    def define_schema(cls) -> io.Schema:
        inputs = [
            io.Combo.Input(
                "mode",
                options=list(MIX_MODES),
                default=WEIGHTED_SUM,
                tooltip=(
                    "weighted sum: one blended set of tokens (the BLIP-Diffusion multi-reference blend); "
                    "concatenate: every input's tokens side by side, attended to together."
                ),
            )
        ]
        for i in range(1, INPUTS + 1):
            optional = i > 2
            inputs.append(
                cls.SOCKET.Input(
                    f"{cls.BRANCH}_{i}",
                    optional=optional,
                    tooltip=(
                        f"{cls.BRANCH.capitalize()} tokens to mix (an encoder, a saved {cls.BRANCH} or another mix)."
                    ),
                )
            )
            inputs.append(
                io.Float.Input(
                    f"weight_{i}",
                    default=1.0,
                    min=0.0,
                    max=10.0,
                    step=0.05,
                    optional=optional,
                    tooltip=(
                        f"Share of {cls.BRANCH}_{i}. weighted sum: shares are normalised to add up "
                        "to 1. concatenate: scales that input's tokens (like Apply's weight)."
                    ),
                )
            )
        return schema(
            node_id=cls.NODE_ID,
            display_name=cls.DISPLAY_NAME,
            category=CATEGORY,
            description=cls.SUMMARY,
            search_aliases=[f"blend {cls.BRANCH}s", f"combine {cls.BRANCH}s", "multiple references"],
            inputs=inputs,
            outputs=[cls.SOCKET.Output(display_name=cls.BRANCH, tooltip=cls.OUTPUT_TOOLTIP)],
        )

    @classmethod
    def validate_inputs(cls, mode=None) -> bool | str:
        return check_choice("mode", mode, list(MIX_MODES))

    @classmethod
    def execute(cls, mode, **inputs) -> io.NodeOutput:
        pairs = [
            (inputs[f"{cls.BRANCH}_{i}"], float(inputs.get(f"weight_{i}", 1.0)))
            for i in range(1, INPUTS + 1)
            if inputs.get(f"{cls.BRANCH}_{i}") is not None
        ]
        return io.NodeOutput(mix([t for t, _ in pairs], [w for _, w in pairs], mode))


class DEADiffMixStyles(_Mix):
    NODE_ID = "DEADiffMixStyles"
    DISPLAY_NAME = "DEADiff Mix Styles"
    SUMMARY = (
        "Mixes 2-4 style references into one style: a weighted sum of their tokens (shares "
        "normalised to 1), or all their tokens side by side (concatenate)."
    )
    BRANCH = STYLE
    SOCKET = DEADIFF_STYLE
    OUTPUT_TOOLTIP = "The mixed style, for Apply's style input."


class DEADiffMixContents(_Mix):
    NODE_ID = "DEADiffMixContents"
    DISPLAY_NAME = "DEADiff Mix Contents"
    SUMMARY = (
        "Mixes 2-4 content references into one: a weighted sum of their tokens (shares "
        "normalised to 1), or all their tokens side by side (concatenate)."
    )
    BRANCH = CONTENT
    SOCKET = DEADIFF_CONTENT
    OUTPUT_TOOLTIP = "The mixed content, for Apply's content input."
