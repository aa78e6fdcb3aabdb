"""DEADiff Mix Styles / Mix Contents: several references' tokens as one (BLIP-Diffusion's blend)."""
from __future__ import annotations

from ..deadiff_core.embedding import MIX_MODES, WEIGHTED_SUM, mix
from ..deadiff_core.routing import CONTENT, STYLE
from .loader import CATEGORY

INPUTS = 4


class _Mix:
    BRANCH: str
    TYPE: str
    CATEGORY = CATEGORY
    FUNCTION = "mix"

    @classmethod
    def INPUT_TYPES(cls):
        def tokens(i):
            return (cls.TYPE, {"tooltip": f"{cls.BRANCH.capitalize()} tokens to mix (an encoder, a saved "
                                          f"{cls.BRANCH} or another mix)."})

        def weight(i):
            return ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.05,
                              "tooltip": f"Share of {cls.BRANCH}_{i}. weighted sum: shares are normalised to add up "
                                         "to 1. concatenate: scales that input's tokens (like Apply's weight)."})

        required = {"mode": (list(MIX_MODES), {
            "default": WEIGHTED_SUM,
            "tooltip": "weighted sum: one blended set of tokens (the BLIP-Diffusion multi-reference blend); "
                       "concatenate: every input's tokens side by side, attended to together."})}
        optional = {}
        for i in range(1, INPUTS + 1):
            (required if i <= 2 else optional).update({f"{cls.BRANCH}_{i}": tokens(i), f"weight_{i}": weight(i)})
        return {"required": required, "optional": optional}

    def mix(self, mode, **inputs):
        pairs = [(inputs[f"{self.BRANCH}_{i}"], float(inputs.get(f"weight_{i}", 1.0)))
                 for i in range(1, INPUTS + 1) if inputs.get(f"{self.BRANCH}_{i}") is not None]
        return (mix([t for t, _ in pairs], [w for _, w in pairs], mode),)


class DEADiffMixStyles(_Mix):
    DESCRIPTION = ("Mixes 2-4 style references into one style: a weighted sum of their tokens (shares "
                   "normalised to 1), or all their tokens side by side (concatenate).")
    BRANCH = STYLE
    TYPE = "DEADIFF_STYLE"
    RETURN_TYPES = (TYPE,)
    RETURN_NAMES = ("style",)
    OUTPUT_TOOLTIPS = ("The mixed style, for Apply's style input.",)


class DEADiffMixContents(_Mix):
    DESCRIPTION = ("Mixes 2-4 content references into one: a weighted sum of their tokens (shares "
                   "normalised to 1), or all their tokens side by side (concatenate).")
    BRANCH = CONTENT
    TYPE = "DEADIFF_CONTENT"
    RETURN_TYPES = (TYPE,)
    RETURN_NAMES = ("content",)
    OUTPUT_TOOLTIPS = ("The mixed content, for Apply's content input.",)
