"""DEADiff in plain PyTorch + transformers: checkpoint reading, the two encoders, the attention math.

Never imports ComfyUI, so it is testable (and usable) on its own.
"""

from .attention import disentangled_attention, image_keys_values
from .config import DEADiffConfig
from .tokens import DEADiffTokens
from .errors import DEADiffCheckpointError
from .model import DEADiffModel, load_deadiff
from .sites import BRANCHES, CONTENT, SITES, STYLE, Site

__all__ = [
    "load_deadiff",
    "DEADiffModel",
    "DEADiffConfig",
    "DEADiffCheckpointError",
    "DEADiffTokens",
    "disentangled_attention",
    "image_keys_values",
    "SITES",
    "Site",
    "BRANCHES",
    "STYLE",
    "CONTENT",
]
