"""DEADiff Layer Routing: which of the 16 cross-attention sites get which tokens (research option)."""

from __future__ import annotations

from ..deadiff_core.routing import ROUTING_HELP, Routing, RoutingError
from .sockets import CATEGORY, DEADIFF_ROUTING, io, schema


class DEADiffRouting(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="DEADiffRouting",
            display_name="DEADiff Layer Routing",
            category=CATEGORY,
            description=(
                "Custom routing for research: which cross-attention layers get the style or content "
                "tokens, and with what extra scale. Empty = the official split. " + ROUTING_HELP
            ),
            search_aliases=["DEADiff layers", "layer routing", "attention layers"],
            is_experimental=True,  # beyond the paper; its text format may still change
            inputs=[io.String.Input("routing", default="", multiline=True, tooltip=ROUTING_HELP)],
            outputs=[DEADIFF_ROUTING.Output(display_name="routing", tooltip="For Apply's routing input.")],
        )

    @classmethod
    def validate_inputs(cls, routing=None) -> bool | str:
        """Bad routing text is refused when the prompt is queued."""
        if routing is None:  # linked from another node: checked when it runs
            return True
        try:
            Routing.parse(routing)
        except RoutingError as e:
            return str(e)
        return True

    @classmethod
    def execute(cls, routing) -> io.NodeOutput:
        return io.NodeOutput(Routing.parse(routing))
