"""The widget layouts of the node types the examples use, kept with the runner so that a command line
can be checked before ComfyUI boots (a boot costs 10-40 s; a typo should not).

`known_nodes.json` holds, per node type, what ComfyUI's /object_info says about its inputs minus what
varies between installations (the entries of file lists): input names and order, widget types,
min/max; and the display names it has had (run the command below on each supported ComfyUI: the names
accumulate). The runner first checks every argument against it; after the boot it checks
again against the live definitions, which stay the authority (a node pack update that changed a
node is then still caught, only later). tests/test_runner_preflight.py checks that the file matches
the running ComfyUI; after a node changes, rewrite it with

    python -m deadiff_runner.known_nodes            # boots ComfyUI in this process, rewrites the file
"""

from __future__ import annotations

import json
import sys
from functools import lru_cache
from pathlib import Path
from typing import Optional

SNAPSHOT = Path(__file__).resolve().parent / "known_nodes.json"
# the options of an input that change its widget layout or the values it accepts
KEPT_OPTIONS = (
    "min",
    "max",
    "step",
    "default",
    "forceInput",
    "defaultInput",
    "control_after_generate",
    "image_upload",
    "video_upload",
    "animated_image_upload",
    "audio_upload",
)
# besides the types the examples use: the pack's other nodes and the core nodes a user's variant is likely to add
EXTRA_TYPES = (
    "DEADiffMixContents",
    "DEADiffLoadContent",
    "DEADiffRouting",
    "KSamplerAdvanced",
    "VAELoader",
    "LoraLoaderModelOnly",
    "CheckpointLoader",
    "PreviewImage",
    "LoadImageMask",
    "ControlNetApply",
    "DiffControlNetLoader",
    "ImageScale",
)


def _reduce_spec(spec):
    kind = spec[0] if isinstance(spec, (list, tuple)) and spec else spec
    options = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}
    kept = {k: options[k] for k in KEPT_OPTIONS if k in options}
    if isinstance(kind, (list, tuple)) or kind == "COMBO":
        return ["COMBO", kept]
    return [str(kind), kept]


def reduce(info: dict) -> dict:
    """What the snapshot keeps of one node's /object_info entry: its inputs (the widget layout and the
    accepted ranges, which the pre-boot check uses), its outputs (which the graph analysis follows) and
    its display name."""
    inputs = {}
    for group in ("required", "optional"):
        table = (info.get("input") or {}).get(group) or {}
        inputs[group] = {name: _reduce_spec(spec) for name, spec in table.items()}
    return {
        "input": inputs,
        "input_order": info.get("input_order") or {k: list(v) for k, v in inputs.items()},
        "output": list(info.get("output") or []),
        "output_name": list(info.get("output_name") or []),
        "name": info.get("name"),
        "display_names": [info.get("display_name") or info.get("name")],
    }


@lru_cache(maxsize=1)
def _load() -> dict:
    try:
        return json.loads(SNAPSHOT.read_text(encoding="utf-8"))["nodes"]
    except (OSError, ValueError, KeyError):
        return {}


def node_info(class_type: str) -> Optional[dict]:
    """A `node_info` (see workflow_api) that knows only the snapshot's node types. `display_names` lists the
    names ComfyUI versions gave the node (0.3.75's "Load LoRA" is 0.33's "Load LoRA (Model and CLIP)"),
    so a name the user copied from either is found before the boot."""
    entry = _load().get(class_type)
    if entry is None:
        return None
    return {**entry, "display_name": entry["display_names"][0]}


def snapshot_types() -> list[str]:
    from .workflows import EXAMPLES_DIR

    types = set(EXTRA_TYPES)
    for path in EXAMPLES_DIR.glob("*.json"):
        types.update(n.get("type") for n in json.loads(path.read_text(encoding="utf-8")).get("nodes", []))
    return sorted(t for t in types if t not in ("Note", "MarkdownNote", "PrimitiveNode", "Reroute"))


def build(live_node_info, previous: Optional[dict] = None) -> dict:
    """The snapshot from a live ComfyUI, keeping the display names an earlier snapshot had (from another
    ComfyUI version) after the live one."""
    nodes = {}
    for class_type in snapshot_types():
        info = live_node_info(class_type)
        if info is not None:
            nodes[class_type] = reduce(info)
            for name in ((previous or {}).get(class_type) or {}).get("display_names", []):
                if name not in nodes[class_type]["display_names"]:
                    nodes[class_type]["display_names"].append(name)
    return nodes


def main(argv=None) -> int:
    from .comfy_session import Session, find_comfyui

    session = Session(find_comfyui(None), only_deadiff_nodes=True)
    try:
        nodes = build(session.node_info(), _load())
    finally:
        session.close()
    SNAPSHOT.write_text(
        json.dumps(
            {"about": "written by python -m deadiff_runner.known_nodes; see its docstring", "nodes": nodes},
            indent=1,
            sort_keys=True,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"{SNAPSHOT}: {len(nodes)} node types")
    return 0


if __name__ == "__main__":
    sys.exit(main())
