"""Custom routing (a research option): which sites get which tokens, at what scale, written as text
such as `content=off, output_3=style*0.8` on top of the official split (deadiff_core/sites.py)."""

from __future__ import annotations

from dataclasses import dataclass

from .sites import BRANCHES, CONTENT, SITES, SITES_BY_NAME, STYLE, Site


@dataclass(frozen=True)
class Route:
    branch: str  # whose tokens this site attends to
    scale: float  # multiplies the branch weight at this site


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
    "reference tokens at all there: plain SD1.5 attention). Example: content=off, output_3=style*0.8"
)


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
