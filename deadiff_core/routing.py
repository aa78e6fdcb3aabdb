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
    index: int            # position 0..15 in the official ordering
    ldm_block: str        # "input_blocks.1", "middle_block", "output_blocks.9"
    comfy_block: tuple[str, int]  # ComfyUI's transformer_options["block"]: ("input", 1), ("middle", 0)
    branch: str           # STYLE or CONTENT under the official split

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
_ORDER = (
    [("input", i) for i in (1, 2, 4, 5, 7, 8)]
    + [("middle", 0)]
    + [("output", i) for i in range(3, 12)]
)


def _ldm_block(comfy_block: tuple[str, int]) -> str:
    kind, number = comfy_block
    return "middle_block" if kind == "middle" else f"{kind}_blocks.{number}"


SITES: tuple[Site, ...] = tuple(
    Site(i, _ldm_block(b), b, CONTENT if b in _CONTENT_BLOCKS else STYLE) for i, b in enumerate(_ORDER)
)
SITES_BY_NAME = {s.name: s for s in SITES}
SITES_BY_BLOCK = {s.comfy_block: s for s in SITES}


# ------------------------------------------------------------------ custom routing (research option)

@dataclass(frozen=True)
class Route:
    branch: str     # whose tokens this site attends to
    scale: float    # multiplies the branch weight at this site


OFF = "off"
_GROUPS = {
    "all": lambda s: True,
    STYLE: lambda s: s.branch == STYLE,
    CONTENT: lambda s: s.branch == CONTENT,
    "input": lambda s: s.comfy_block[0] == "input",
    "middle": lambda s: s.comfy_block[0] == "middle",
    "output": lambda s: s.comfy_block[0] == "output",
}
ROUTING_HELP = (
    "Entries `TARGET=VALUE`, separated by commas or new lines, applied in order on top of the official "
    "split. TARGET: a site (" + ", ".join(s.name for s in SITES) + ") or a group (all, style, content, "
    "input, middle, output; style/content = the official style/content sites). VALUE: a number (scales "
    "that site's weight), style or content (which tokens the site gets), style*0.5 (both), or off (no "
    "reference tokens at all there: plain SD1.5 attention). Example: content=off, output_3=style*0.8")


class RoutingError(ValueError):
    pass


class Routing:
    """Which branch's tokens each site attends to, and with what extra scale. The default is the
    official split (docs/design.md §5) at scale 1."""

    def __init__(self, routes: dict[str, Route | None]) -> None:
        self.routes = {s.name: routes.get(s.name) for s in SITES}  # site name -> Route, or None (off)

    @classmethod
    def official(cls) -> "Routing":
        return cls({s.name: Route(s.branch, 1.0) for s in SITES})

    @property
    def is_official(self) -> bool:
        return self.routes == Routing.official().routes

    def route(self, site: Site) -> Route | None:
        return self.routes[site.name]

    @classmethod
    def parse(cls, text: str) -> "Routing":
        routes = dict(cls.official().routes)
        lines = [line.split("#", 1)[0] for line in (text or "").splitlines()]
        entries = [e.strip() for line in lines for e in line.replace(";", ",").split(",") if e.strip()]
        for entry in entries:
            target, sep, value = (part.strip().lower() for part in entry.partition("="))
            if not sep or not target or not value:
                raise RoutingError(f"routing entry {entry!r} is not TARGET=VALUE. {ROUTING_HELP}")
            if target in SITES_BY_NAME:
                sites = [SITES_BY_NAME[target]]
            elif target in _GROUPS:
                sites = [s for s in SITES if _GROUPS[target](s)]
            else:
                raise RoutingError(f"routing entry {entry!r}: unknown site or group {target!r}. {ROUTING_HELP}")
            for site in sites:
                routes[site.name] = _parse_value(value, routes[site.name], site, entry)
        return cls(routes)

    def describe(self) -> str:
        """Compact text that parses back to this routing (empty for the official split)."""
        parts = []
        for site in SITES:
            route = self.routes[site.name]
            if route == Route(site.branch, 1.0):
                continue
            parts.append(f"{site.name}={OFF}" if route is None else f"{site.name}={route.branch}*{route.scale!r}")
        return ", ".join(parts)


def _parse_value(value: str, current: Route | None, site: Site, entry: str) -> Route | None:
    if value == OFF:
        return None
    branch, _, scale_text = value.partition("*")
    branch = branch.strip()
    if branch in BRANCHES:
        scale_text = scale_text.strip() or "1"
    elif not scale_text:  # a bare number: the site keeps its branch (its official one if it was off)
        branch, scale_text = (current.branch if current else site.branch), branch
    else:
        raise RoutingError(f"routing entry {entry!r}: {branch!r} is not style or content. {ROUTING_HELP}")
    try:
        scale = float(scale_text)
    except ValueError:
        raise RoutingError(f"routing entry {entry!r}: {scale_text!r} is not a number. {ROUTING_HELP}") from None
    if scale != scale or abs(scale) == float("inf"):
        raise RoutingError(f"routing entry {entry!r}: the scale must be a finite number")
    return Route(branch, scale)
