"""The nodes on ComfyUI's V3 schema keep the contract of the V1 nodes they replaced.

tests/data/saved_before_v3 holds what the pack's V1 nodes (main before the move) gave: the server's
/object_info for the ten nodes, and a workflow using all ten with non-default values as the front end
saved it (UI format) and queued it (API format); make_fixture.py there says how they were made. A
workflow shared before the move must load, convert, validate and run unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch

import deadiff_fakes
from graphs import Graph
from ui_to_api import to_api

SAVED = Path(__file__).resolve().parent / "data" / "saved_before_v3"
PACK_NODES = json.loads((SAVED / "object_info.json").read_text(encoding="utf-8"))
# combo inputs whose choices are files on the machine (compared by type, not by their current list)
FILE_LISTS = {
    ("DEADiffModelLoader", "deadiff_name"),
    ("DEADiffLoadStyle", "tokens_file"),
    ("DEADiffLoadContent", "tokens_file"),
}
# what nodes gained since that snapshot, only ever at the END of their optional inputs and outputs, so
# saved workflows keep their widget values and links
ADDED_OPTIONAL = {
    "DEADiffStyleEncoder": ["resize_mode", "pad_color", "reference_mask"],
    "DEADiffContentEncoder": ["resize_mode", "pad_color", "reference_mask"],
}
ADDED_OUTPUTS = {
    "DEADiffStyleEncoder": ["preview"],
    "DEADiffContentEncoder": ["preview"],
    "DEADiffSaveTokens": ["tokens_file"],
}


def load_saved(name: str):
    return json.loads((SAVED / name).read_text(encoding="utf-8"))


def pack_module(comfy, name: str):
    return sys.modules[comfy.module("DEADiffApply").__package__.rsplit(".", 1)[0] + "." + name]


def combo_choices(spec):
    """(type, choices) of an input spec: a V1 list input is a combo whose choices are the list itself,
    a V3 combo is "COMBO" with its choices under "options"; any other type has no choices."""
    kind, options = spec[0], spec[1] if len(spec) > 1 else {}
    if isinstance(kind, list):
        return "COMBO", kind
    return kind, options.get("options")


# ------------------------------------------------------------------------------------ /object_info
def test_object_info_keeps_the_contract_of_the_v1_nodes(comfy_server):
    info = comfy_server.get("/object_info")
    for node_id, before in PACK_NODES.items():
        now = info[node_id]
        for key in ("name", "display_name", "category", "description", "output_node"):
            assert now[key] == before[key], f"{node_id}.{key}: {now[key]!r} != {before[key]!r}"
        added = len(ADDED_OUTPUTS.get(node_id, []))
        assert now["output_name"] == before["output_name"] + ADDED_OUTPUTS.get(node_id, []), node_id
        for key in ("output", "output_is_list"):
            kept = now[key][: len(now[key]) - added]
            assert kept == before[key], f"{node_id}.{key}: {now[key]!r} does not start with {before[key]!r}"
        # a V1 node without outputs sent no output_tooltips; V3 sends an empty list
        kept_tooltips = (now.get("output_tooltips") or [])[: len(before["output"])]
        assert kept_tooltips == (before.get("output_tooltips") or []), node_id
        for section in ("required", "optional"):
            old, new = before["input"].get(section, {}), now["input"].get(section, {})
            gained = ADDED_OPTIONAL.get(node_id, []) if section == "optional" else []
            assert list(new) == list(old) + gained, f"{node_id} {section} inputs: {list(new)} != {list(old)}"
            assert now["input_order"].get(section, []) == before["input_order"].get(section, []) + gained
            for name, old_spec in old.items():
                new_spec = new[name]
                old_type, old_choices = combo_choices(old_spec)
                new_type, new_choices = combo_choices(new_spec)
                assert new_type == old_type, f"{node_id}.{name}: type {new_type!r} != {old_type!r}"
                if (node_id, name) not in FILE_LISTS:
                    assert new_choices == old_choices, f"{node_id}.{name}: choices {new_choices} != {old_choices}"
                for option, value in old_spec[1].items():  # default, min, max, step, tooltip, multiline ...
                    assert new_spec[1].get(option) == value, f"{node_id}.{name}.{option}: {new_spec[1].get(option)!r}"


def test_layer_routing_is_experimental_and_the_rest_is_not(comfy_server):
    info = comfy_server.get("/object_info")
    assert info["DEADiffRouting"]["experimental"] is True
    assert not any(info[n].get("experimental") for n in PACK_NODES if n != "DEADiffRouting")


def test_typing_deadiff_in_the_node_search_finds_apply(comfy, comfy_server):
    """ComfyUIs whose schema has search aliases (0.33) send them in /object_info; the front end's
    search matches them. 0.3.75 has none: there the node id and category carry the name."""
    from comfy_api.v0_0_2 import io

    apply = comfy_server.get("/object_info/DEADiffApply")["DEADiffApply"]
    assert "DEADiff" not in apply["display_name"], "the alias is what makes the search find it"
    if "search_aliases" in {f.name for f in dataclasses.fields(io.Schema)}:
        assert "DEADiff" in apply["search_aliases"]
    else:
        assert "search_aliases" not in apply
        assert apply["name"].startswith("DEADiff") and apply["category"] == "DEADiff"


# --------------------------------------------------------------------------- queue-time validation
def small_graph(deadiff_name, batch_mode="concatenate", start_at=0.0, end_at=1.0, mode="weighted sum"):
    g = Graph()
    tiny = g.node("DEADiffTest_TinySD15", seed=0)
    pos = g.node("CLIPTextEncode", clip=tiny[1], text="a boat")
    loader = g.node("DEADiffModelLoader", deadiff_name=deadiff_name)
    image = g.node("DEADiffTest_ImageFromSeed", seed=1, width=64, height=64, batch_size=1, channels=3)
    style = g.node("DEADiffStyleEncoder", deadiff=loader, image=image, batch_mode=batch_mode)
    mixed = g.node("DEADiffMixStyles", mode=mode, style_1=style, weight_1=1.0, style_2=style, weight_2=1.0)
    apply = g.node(
        "DEADiffApply",
        model=tiny[0],
        deadiff=loader,
        style_weight=1.0,
        content_weight=1.0,
        start_at=start_at,
        end_at=end_at,
        style=mixed,
    )
    latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=1)
    sample = g.node(
        "KSampler",
        model=apply,
        seed=1,
        steps=1,
        cfg=8.0,
        sampler_name="euler",
        scheduler="normal",
        positive=pos,
        negative=pos,
        latent_image=latent,
        denoise=1.0,
    )
    g.node("DEADiffTest_CaptureLatent", samples=sample, key="v3-validation")
    return g.prompt


@pytest.fixture(scope="module")
def deadiff_name(comfy):
    return deadiff_fakes.place(comfy.base / "models" / "deadiff", "deadiff_v1.ckpt", seed=0)


@pytest.mark.parametrize(
    "change,words",
    [
        (dict(deadiff_name="not_there.ckpt"), "Value not in list: deadiff_name 'not_there.ckpt'"),
        (dict(batch_mode="median"), "Value not in list: batch_mode 'median'"),
        (dict(mode="product"), "Value not in list: mode 'product'"),
        (dict(start_at=0.8, end_at=0.2), "start_at (0.8) is after end_at (0.2)"),
        (dict(start_at=1.5), "start_at: Value 1.5 bigger than max of 1.0"),
    ],
)
def test_bad_values_are_refused_when_the_prompt_is_queued(comfy, deadiff_name, change, words):
    """Refused by validation (nothing runs), with the same words on every ComfyUI version: 0.3.75 does
    not check V3 lists itself, so the nodes do."""
    options = {"deadiff_name": deadiff_name, **change}
    valid = comfy.validate(small_graph(**options))
    assert valid[0] is False
    assert words in json.dumps(valid[3]), valid[3]
    assert comfy.validate(small_graph(deadiff_name))[0] is True


# ------------------------------------------------------------------------- the workflow saved before V3
@pytest.fixture(scope="module")
def saved_tokens(comfy, deadiff_name):
    """The two saved-token files the workflow loads, made by this pack from the same DEADiff file."""
    import folder_paths

    managed = pack_module(comfy, "nodes.managed")
    encoders = pack_module(comfy, "nodes.encoders")
    tokens_module = pack_module(comfy, "deadiff_core.tokens")
    tiny = comfy.module("DEADiffTest_TinySD15")
    deadiff = managed.ManagedDEADiff.from_file(folder_paths.get_full_path_or_raise("deadiff", deadiff_name))
    folder = comfy.base / "input" / "deadiff"
    folder.mkdir(parents=True, exist_ok=True)
    for branch, seed in (("style", 21), ("content", 22)):
        tokens = encoders.encode(deadiff, tiny.image_from_seed(seed, 80, 96), branch)
        tokens_module.save_tokens(str(folder / f"fixture_{branch}.safetensors"), tokens)
    return deadiff


def test_saved_workflow_converts_to_the_prompt_the_front_end_queued(comfy):
    """The same class types and inputs; `_meta.title` (informational) is a node's display name, which
    ComfyUI changes for its own nodes (SolidMask is "Create Solid Mask" in 0.33), so only ours are compared."""
    converted, queued = to_api(comfy, load_saved("workflow.json")), load_saved("prompt.json")
    assert converted.keys() == queued.keys()
    for node_id, node in queued.items():
        ours = node["class_type"] in PACK_NODES
        assert {k: v for k, v in converted[node_id].items() if ours or k != "_meta"} == {
            k: v for k, v in node.items() if ours or k != "_meta"
        }, node_id


def test_saved_workflow_validates_and_runs_with_its_values(comfy, saved_tokens):
    prompt = load_saved("prompt.json")
    ids = load_saved("node_ids.json")
    before = set((comfy.base / "output" / "deadiff").glob("fixture_mix_*.safetensors"))
    out = comfy.run(prompt)
    samples = out[str(ids["sample"])][0]["samples"]
    assert samples.shape == (1, 4, 8, 8) and torch.isfinite(samples).all()
    written = set((comfy.base / "output" / "deadiff").glob("fixture_mix_*.safetensors")) - before
    assert len(written) == 1, "DEADiff Save Tokens wrote one file"

    # every saved widget value reached the input it was saved for
    style = out[str(ids["style"])][0]
    assert style.tokens.shape[0] == 1, "batch_mode 'average': one set of 16 for the two references"
    mixed = out[str(ids["mix_contents"])][0]
    assert mixed.tokens.shape[1] == 32, "'concatenate': the encoder's and the saved content's 16 tokens"
    model = out[str(ids["apply"])][0]
    patches = model.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert len(patches) == 16
    (contribution,) = next(iter(patches.values())).contributions
    assert contribution.weights == {"style": 0.9, "content": 0.6}
    sampling = model.get_model_object("model_sampling")
    assert contribution.sigma_start == pytest.approx(float(sampling.percent_to_sigma(0.05)))
    assert contribution.sigma_end == pytest.approx(float(sampling.percent_to_sigma(0.95)))
    sites = {s.name: s for s in pack_module(comfy, "deadiff_core.routing").SITES}
    assert contribution.routing.route(sites["output_3"]).scale == pytest.approx(0.8)
    assert contribution.routing.route(sites["input_7"]).scale == pytest.approx(0.5)
    assert contribution.mask is not None and contribution.negative["style"] is not None


@pytest.mark.server
def test_saved_workflow_runs_in_the_real_server(comfy_server, saved_tokens, comfy):
    """The prompt the front end queued before V3, posted to the real server's /prompt as it was."""
    deadiff_fakes.place(comfy_server.base / "models" / "deadiff", "deadiff_v1.ckpt", seed=0)
    folder = comfy_server.base / "input" / "deadiff"
    folder.mkdir(parents=True, exist_ok=True)
    for branch in ("style", "content"):
        name = f"fixture_{branch}.safetensors"
        (folder / name).write_bytes((comfy.base / "input" / "deadiff" / name).read_bytes())
    ids = load_saved("node_ids.json")
    entry = comfy_server.run(load_saved("prompt.json"))
    (saved,) = entry["outputs"][str(ids["save"])]["deadiff_tokens"]
    assert saved["filename"].startswith("fixture_mix_") and saved["subfolder"] == "deadiff"
    assert (comfy_server.base / "output" / "deadiff" / saved["filename"]).stat().st_size > 0
