"""The tokens one branch extracted from reference images, as they travel between nodes."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .routing import BRANCHES


@dataclass(frozen=True)
class DEADiffTokens:
    branch: str            # "style" or "content": which Q-Former made them, which sites they feed
    tokens: torch.Tensor   # (references, tokens, width) on ComfyUI's intermediate device
    source: str            # fingerprint of the DEADiff file's dimensions, to refuse mismatches

    def __post_init__(self):
        if self.branch not in BRANCHES:
            raise ValueError(f"branch must be one of {BRANCHES}, got {self.branch!r}")
        if self.tokens.ndim != 3:
            raise ValueError(f"tokens must be (references, tokens, width), got shape {tuple(self.tokens.shape)}")

    @property
    def width(self) -> int:
        return self.tokens.shape[-1]

    def joined(self) -> torch.Tensor:
        """All references' tokens side by side, (1, references * tokens, width): every reference is
        attended to at once. One reference gives exactly the official (1, 16, width)."""
        return self.tokens.reshape(1, -1, self.width)
