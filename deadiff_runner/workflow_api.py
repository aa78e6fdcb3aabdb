"""ComfyUI workflows (the front end's UI / litegraph format) -> API-format prompts.

A workflow saved from the ComfyUI front end keeps, per node, only the *values* of its widgets
(`widgets_values`, a list in the order the front end created the widgets) and its linked sockets.
The API format that `execution.validate_prompt` and `/prompt` take names every input. Going from
one to the other needs the node definitions the front end was built from, so this module asks the
running ComfyUI for them, the same way its server answers `/object_info` (V1 nodes through
`INPUT_TYPES()` and `input_order`, V3 `comfy_api` nodes through their own `GET_NODE_INFO_V1()`),
and then rebuilds the front end's widget layout from them:

- widgets are created for the inputs in `input_order` (required, then optional, then anything
  else), for every input whose type is a widget type (INT, FLOAT, STRING, BOOLEAN, COMBO or a list,
  ...) unless it has `forceInput`;
- an INT input named `seed` / `noise_seed`, or with `control_after_generate`, is followed by the
  "control after generate" widget (one extra value, e.g. "fixed"; never sent to the server); a
  COMBO with `control_after_generate` is followed by two (the control and its filter list);
- a COMBO with `image_upload` / `video_upload` / `animated_image_upload` gets an extra "upload"
  widget after all other inputs (its value is "image"; never sent), `audio_upload` likewise;
- a linked widget input (a "converted" widget) takes its value from the link, not from the widget;
- front-end-only nodes (Note, MarkdownNote, PrimitiveNode, Reroute) are not sent: a PrimitiveNode's
  value goes to the widgets it is linked to, a Reroute passes its link through;
- muted nodes (mode 2) are dropped, bypassed nodes (mode 4) pass each output on from the input of
  the same type, as the front end does.

Subgraphs are refused with a clear message (unpack them in the front end first).

Nothing here imports ComfyUI: callers pass a `node_info(class_type) -> dict | None` function; use
`comfy_node_info(nodes_module)` for the real one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

# Node types that exist only in the front end (never sent to the server).
VIRTUAL_NODE_TYPES = frozenset({"Note", "MarkdownNote", "PrimitiveNode", "Reroute"})
# Input types the front end makes a widget for (its core ComfyWidgets, the list type being COMBO).
# Widgets that extensions add (e.g. AUDIO_UI, WEBCAM) also hold one value each.
WIDGET_TYPES = frozenset(
    {
        "INT",
        "FLOAT",
        "BOOLEAN",
        "STRING",
        "MARKDOWN",
        "COMBO",
        "IMAGEUPLOAD",
        "COLOR",
        "IMAGECOMPARE",
        "CHART",
        "GALLERIA",
        "TEXTAREA",
        "AUDIOUPLOAD",
        "AUDIO_UI",
        "AUDIO_RECORD",
        "WEBCAM",
        "LOAD_3D",
        "PREVIEW_3D",
    }
)
# Widgets that the front end saves in widgets_values but never sends in a prompt.
UI_ONLY_WIDGET_TYPES = frozenset({"IMAGEUPLOAD", "AUDIOUPLOAD", "AUDIO_UI", "AUDIO_RECORD"})
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize", "increment-wrap")
MODE_MUTED = 2
MODE_BYPASSED = 4

NodeInfo = Callable[[str], Optional[dict]]


class WorkflowError(ValueError):
    """The workflow cannot be converted: unknown node types, wrong widget values, broken links."""


class MissingNodeTypes(WorkflowError):
    def __init__(self, missing: dict):
        self.missing = missing  # class_type -> [node ids]
        listed = ", ".join(f"{t} (node {', '.join(map(str, ids))})" for t, ids in sorted(missing.items()))
        super().__init__(
            f"This ComfyUI has no node type {listed}. Install or update the node pack that "
            "provides it (for the DEADiff nodes: this pack, ComfyUI-DEADiff, and check the "
            "ComfyUI log for an import error)."
        )


@dataclass(frozen=True)
class Widget:
    """One entry of a node's widgets_values: the input it belongs to (None for control widgets)."""

    name: Optional[str]
    input_type: str
    sent: bool  # whether the front end puts this widget's value in the API prompt


def comfy_node_info(nodes_module) -> NodeInfo:
    """`node_info` for the running ComfyUI, with what its server's /object_info says about a node."""
    try:
        from comfy_api.internal import _ComfyNodeInternal
    except ImportError:  # older ComfyUI without V3 nodes
        _ComfyNodeInternal = ()

    def node_info(class_type: str) -> Optional[dict]:
        cls = nodes_module.NODE_CLASS_MAPPINGS.get(class_type)
        if cls is None:
            return None
        if _ComfyNodeInternal and issubclass(cls, _ComfyNodeInternal):
            return cls.GET_NODE_INFO_V1()
        inputs = cls.INPUT_TYPES()
        return {
            "input": inputs,
            "input_order": {key: list(value.keys()) for key, value in inputs.items()},
            "output": list(cls.RETURN_TYPES),
            "output_name": list(getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES),
            "name": class_type,
            "display_name": nodes_module.NODE_DISPLAY_NAME_MAPPINGS.get(class_type, class_type),
        }

    return node_info


def _spec_type(spec) -> str:
    kind = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    return "COMBO" if isinstance(kind, (list, tuple)) else str(kind)


def _spec_options(spec) -> dict:
    if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict):
        return spec[1]
    return {}


def ordered_inputs(info: dict) -> list[tuple[str, object]]:
    """(name, spec) of every visible input in the order the front end builds them: input_order's
    required, then its optional, then the rest; plus the upload widget the front end adds."""
    declared = info.get("input", {})
    required = dict(declared.get("required") or {})
    optional = dict(declared.get("optional") or {})
    for name, spec in required.items():  # the front end's Comfy.UploadImage / UploadAudio extensions
        options = _spec_options(spec)
        if _spec_type(spec) == "COMBO" and (
            options.get("image_upload") or options.get("video_upload") or options.get("animated_image_upload")
        ):
            required["upload"] = ("IMAGEUPLOAD", {"imageInputName": name})
            break
    audio = required.get("audio")
    if audio is not None and _spec_options(audio).get("audio_upload") and "upload" not in required:
        required["upload"] = ("AUDIOUPLOAD", {})
    order = info.get("input_order") or {}
    result, seen = [], set()
    for group, table in (("required", required), ("optional", optional)):
        for name in order.get(group, []):
            if name in table and name not in seen:
                result.append((name, table[name]))
                seen.add(name)
    for table in (required, optional):
        for name, spec in table.items():
            if name not in seen:
                result.append((name, spec))
                seen.add(name)
    return result


def is_widget_input(spec) -> bool:
    options = _spec_options(spec)
    if options.get("forceInput") or options.get("defaultInput"):
        return False
    return _spec_type(spec) in WIDGET_TYPES


def widget_layout(info: dict, include_force_input: bool = False) -> list[Widget]:
    """The widgets a node of this definition has, in widgets_values order."""
    layout = []
    for name, spec in ordered_inputs(info):
        kind = _spec_type(spec)
        options = _spec_options(spec)
        if include_force_input and options.get("forceInput") and kind in WIDGET_TYPES:
            layout.append(Widget(name, kind, False))
            continue
        if not is_widget_input(spec):
            continue
        layout.append(Widget(name, kind, kind not in UI_ONLY_WIDGET_TYPES))
        control = options.get("control_after_generate")
        if kind == "INT" and (control if control is not None else name in ("seed", "noise_seed")):
            layout.append(Widget(None, "CONTROL", False))
        elif kind == "COMBO" and control:
            layout.extend([Widget(None, "CONTROL", False), Widget(None, "CONTROL_FILTER", False)])
    return layout


def widget_values(node: dict, info: dict) -> dict:
    """{input name: value} of a UI node's widgets (only those the front end sends)."""
    values = node.get("widgets_values")
    if values is None:
        values = []
    layout = widget_layout(info)
    if isinstance(values, dict):  # some front-end extensions save widgets by name
        return {w.name: values[w.name] for w in layout if w.sent and w.name in values}
    optional = set((info.get("input") or {}).get("optional") or {})
    if len(values) < len(layout) and all(w.name in optional for w in layout[len(values) :]):
        layout = layout[: len(values)]  # saved before these optional widgets existed: they keep their defaults
    if len(values) != len(layout):
        # workflows saved by front ends that still kept a value for each forceInput input
        legacy = widget_layout(info, include_force_input=True)
        if len(values) == len(legacy):
            layout = legacy
        else:
            names = [w.name or "(control after generate)" for w in layout]
            raise WorkflowError(
                f"node {node.get('id')} ({node.get('type')}): {len(values)} widget values {values!r} but this "
                f"ComfyUI's {node.get('type')} has {len(names)} widgets {names}; the workflow was saved with a "
                "different version of that node."
            )
    out = {}
    for widget, value in zip(layout, values):
        if widget.name is None:
            if value not in CONTROL_VALUES and widget.input_type == "CONTROL":
                raise WorkflowError(
                    f"node {node.get('id')} ({node.get('type')}): control value {value!r} is not one "
                    f"of {CONTROL_VALUES}"
                )
            continue
        if widget.sent:
            out[widget.name] = value
    return out


def set_widget_value(node: dict, info: dict, name: str, value) -> None:
    """Change one widget's value in a UI node (e.g. the prompt text), in place."""
    layout = widget_layout(info)
    values = node.setdefault("widgets_values", [])
    if isinstance(values, dict):
        values[name] = value
        return
    for index, widget in enumerate(layout):
        if widget.name == name:
            if len(values) != len(layout):
                raise WorkflowError(
                    f"node {node.get('id')} ({node.get('type')}) has {len(values)} widget values, "
                    f"expected {len(layout)}"
                )
            values[index] = value
            return
    raise WorkflowError(
        f"node {node.get('id')} ({node.get('type')}) has no widget {name!r}; its widgets are "
        f"{[w.name for w in layout if w.name]}"
    )


class _Graph:
    def __init__(self, workflow: dict):
        if not isinstance(workflow, dict) or "nodes" not in workflow:
            if isinstance(workflow, dict) and all(isinstance(v, dict) and "class_type" in v for v in workflow.values()):
                raise WorkflowError("this is already an API-format prompt, not a UI workflow")
            raise WorkflowError("not a ComfyUI workflow: no 'nodes' list")
        subgraphs = {s.get("id") for s in (workflow.get("definitions") or {}).get("subgraphs", [])}
        self.nodes = {}
        for node in workflow["nodes"]:
            if node.get("type") in subgraphs:
                raise WorkflowError(
                    f"node {node.get('id')} is a subgraph; convert it back to nodes (Unpack Subgraph) "
                    "before running this workflow headless"
                )
            self.nodes[node["id"]] = node
        self.links = {}
        for link in workflow.get("links") or []:
            if isinstance(link, dict):  # the 1.x schema's object form
                link = [
                    link["id"],
                    link["origin_id"],
                    link["origin_slot"],
                    link["target_id"],
                    link["target_slot"],
                    link.get("type"),
                ]
            self.links[link[0]] = link

    def upstream(self, node: dict, slot_index: int):
        """(origin node, origin slot) feeding this input slot, or None."""
        link_id = node.get("inputs", [])[slot_index].get("link")
        if link_id is None:
            return None
        link = self.links.get(link_id)
        if link is None:
            raise WorkflowError(
                f"node {node['id']} input {node['inputs'][slot_index].get('name')!r} refers to link "
                f"{link_id}, which the workflow does not have"
            )
        origin = self.nodes.get(link[1])
        if origin is None:
            raise WorkflowError(f"link {link_id} comes from node {link[1]}, which the workflow does not have")
        return origin, link[2]

    def resolve(self, node: dict, slot_index: int, seen=None):
        """Follow a link up through Reroutes and bypassed nodes to a real node: (node, slot),
        ("value", v) for a PrimitiveNode, or None when nothing real feeds it."""
        seen = set() if seen is None else seen
        source = self.upstream(node, slot_index)
        if source is None:
            return None
        origin, slot = source
        if (origin["id"], slot) in seen:
            raise WorkflowError(f"link cycle through node {origin['id']}")
        seen.add((origin["id"], slot))
        mode = origin.get("mode", 0)
        if mode == MODE_MUTED:
            return None
        if origin.get("type") == "Reroute":
            return self.resolve(origin, 0, seen) if origin.get("inputs") else None
        if origin.get("type") == "PrimitiveNode":
            values = origin.get("widgets_values") or []
            if not values:
                raise WorkflowError(f"PrimitiveNode {origin['id']} has no value")
            return ("value", values[0])
        if origin.get("type") in VIRTUAL_NODE_TYPES:
            return None
        if mode == MODE_BYPASSED:
            outputs = origin.get("outputs") or []
            wanted = outputs[slot].get("type") if slot < len(outputs) else None
            inputs = origin.get("inputs") or []
            candidates = ([slot] if slot < len(inputs) else []) + list(range(len(inputs)))
            for index in candidates:
                if inputs[index].get("type") == wanted and inputs[index].get("link") is not None:
                    return self.resolve(origin, index, seen)
            return None
        return origin, slot


def ui_to_api(workflow: dict, node_info: NodeInfo) -> dict:
    """The API-format prompt (`{id: {class_type, inputs, _meta}}`) the front end would queue."""
    graph = _Graph(workflow)
    missing: dict = {}
    infos = {}
    for node_id, node in graph.nodes.items():
        if node.get("type") in VIRTUAL_NODE_TYPES or node.get("mode", 0) in (MODE_MUTED, MODE_BYPASSED):
            continue
        info = node_info(node.get("type"))
        if info is None:
            missing.setdefault(node.get("type"), []).append(node_id)
        infos[node_id] = info
    if missing:
        raise MissingNodeTypes(missing)

    prompt = {}
    for node_id, node in sorted(graph.nodes.items(), key=lambda item: _sort_key(item[0])):
        if node_id not in infos:
            continue
        info = infos[node_id]
        inputs = widget_values(node, info)
        declared = {name for name, _ in ordered_inputs(info)}
        for index, slot in enumerate(node.get("inputs") or []):
            name = (slot.get("widget") or {}).get("name") or slot.get("name")
            if slot.get("link") is None:
                continue
            if name not in declared:
                raise WorkflowError(
                    f"node {node_id} ({node.get('type')}) has a link into {name!r}, an input this "
                    f"ComfyUI's {node.get('type')} does not have"
                )
            source = graph.resolve(node, index)
            if source is None:  # fed by a muted node or an empty Reroute: like the front end, send nothing
                continue
            if source[0] == "value":
                inputs[name] = source[1]
            else:
                origin, origin_slot = source
                inputs[name] = [str(origin["id"]), origin_slot]
        entry = {"inputs": inputs, "class_type": node["type"]}
        entry["_meta"] = {"title": node.get("title") or info.get("display_name") or node["type"]}
        prompt[str(node_id)] = entry
    return prompt


def _sort_key(node_id):
    return (0, node_id, "") if isinstance(node_id, int) else (1, 0, str(node_id))


def ui_nodes_by_id(workflow: dict) -> dict:
    return {str(node["id"]): node for node in workflow.get("nodes", [])}
