"""Workflows shared before a node gained an optional widget still load (node inputs are a contract)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ui_to_api import WorkflowError, to_api

EXAMPLE = Path(__file__).resolve().parent.parent / "example_workflows" / "deadiff_style_transfer.json"


def test_encoders_saved_without_batch_mode_convert_and_validate(comfy):
    workflow = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    encoders = [n for n in workflow["nodes"] if n["type"] == "DEADiffStyleEncoder"]
    assert encoders
    for node in encoders:
        node["widgets_values"] = []  # as the pack's first release saved them
    prompt = to_api(comfy, workflow)
    for node in prompt.values():
        if node["class_type"] == "DEADiffStyleEncoder":
            assert "batch_mode" not in node["inputs"], "a missing optional widget keeps the node's default"
    valid = comfy.validate(prompt)
    assert valid[0] or "batch_mode" not in json.dumps(valid[1:]), valid


def test_a_missing_required_widget_is_still_an_error(comfy):
    workflow = json.loads(EXAMPLE.read_text(encoding="utf-8"))
    apply = next(n for n in workflow["nodes"] if n["type"] == "DEADiffApply")
    apply["widgets_values"] = apply["widgets_values"][:-1]
    with pytest.raises(WorkflowError, match="DEADiffApply.*widget values"):
        to_api(comfy, workflow)
