"""The 16 SD1.5 cross-attention sites and which DEADiff branch each one listens to.

DEADiff's disentangled conditioning sends style tokens to the fine (high-resolution) layers and
content tokens to the coarse ones (docs/design.md §5). Sites are named by their LDM block so that checkpoint
keys, ComfyUI patch keys and user-facing routing strings all agree.
"""

from __future__ import annotations

from dataclasses import dataclass

STYLE = "style"
CONTENT = "content"
BRANCHES = (STYLE, CONTENT)


@dataclass(frozen=True)
class Site:
    index: int  # position 0..15 in the official ordering
    ldm_block: str  # "input_blocks.1", "middle_block", "output_blocks.9"
    comfy_block: tuple[str, int]  # ComfyUI's transformer_options["block"]: ("input", 1), ("middle", 0)
    branch: str  # STYLE or CONTENT under the official split

    @property
    def name(self) -> str:
        """Short stable name used in compact files and routing strings: 'input_1', 'middle_0'."""
        return f"{self.comfy_block[0]}_{self.comfy_block[1]}"

    @property
    def checkpoint_prefix(self) -> str:
        """Prefix of this site's attn2 in the official checkpoint's UNet keys."""
        block = "middle_block.1" if self.ldm_block == "middle_block" else f"{self.ldm_block}.1"
        return f"model.diffusion_model.{block}.transformer_blocks.0.attn2."


_CONTENT_BLOCKS = {("input", 7), ("input", 8), ("middle", 0), ("output", 3), ("output", 4)}
_ORDER = [("input", i) for i in (1, 2, 4, 5, 7, 8)] + [("middle", 0)] + [("output", i) for i in range(3, 12)]


def _ldm_block(comfy_block: tuple[str, int]) -> str:
    kind, number = comfy_block
    return "middle_block" if kind == "middle" else f"{kind}_blocks.{number}"


SITES: tuple[Site, ...] = tuple(
    Site(i, _ldm_block(b), b, CONTENT if b in _CONTENT_BLOCKS else STYLE) for i, b in enumerate(_ORDER)
)
SITES_BY_NAME = {s.name: s for s in SITES}
SITES_BY_BLOCK = {s.comfy_block: s for s in SITES}
