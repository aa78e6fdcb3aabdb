"""DEADiff Layer Routing: which of the 16 cross-attention sites get which tokens (research option)."""
from __future__ import annotations

from ..deadiff_core.routing import ROUTING_HELP, Routing, RoutingError
from .loader import CATEGORY


class DEADiffRouting:
    DESCRIPTION = ("Custom routing for research: which cross-attention layers get the style or content "
                   "tokens, and with what extra scale. Empty = the official split. " + ROUTING_HELP)
    CATEGORY = CATEGORY
    RETURN_TYPES = ("DEADIFF_ROUTING",)
    RETURN_NAMES = ("routing",)
    OUTPUT_TOOLTIPS = ("For Apply's routing input.",)
    FUNCTION = "route"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"routing": ("STRING", {
            "default": "", "multiline": True,
            "tooltip": ROUTING_HELP}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, routing=None):
        if routing is None:  # linked from another node: checked when it runs
            return True
        try:
            Routing.parse(routing)
        except RoutingError as e:
            return str(e)
        return True

    def route(self, routing):
        return (Routing.parse(routing),)
