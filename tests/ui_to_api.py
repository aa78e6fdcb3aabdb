"""UI workflow -> API prompt conversion for the tests, with the real ComfyUI node definitions.

The converter itself lives in `deadiff_runner.workflow_api`, because the headless runner runs the same
example workflows through it; this module is the tests' entry point to it (and makes the repository
root importable when pytest was started without it on sys.path).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))

from deadiff_runner.workflow_api import (  # noqa: E402,F401  (after the sys.path line above; re-exported)
    CONTROL_VALUES,
    VIRTUAL_NODE_TYPES,
    MissingNodeTypes,
    Widget,
    WorkflowError,
    comfy_node_info,
    ordered_inputs,
    set_widget_value,
    ui_to_api,
    widget_layout,
    widget_values,
)


def to_api(comfy, workflow: dict) -> dict:
    """The API prompt for `workflow`, built from the node definitions of the ComfyUI that `comfy` booted."""
    return ui_to_api(workflow, comfy_node_info(comfy.nodes))
