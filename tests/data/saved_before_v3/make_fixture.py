"""How the files next to this script were made (kept as the record; it is not part of the test run).

Run once against the pack as it was before its nodes moved to ComfyUI's V3 schema (main at 929ac55,
V1 nodes), ComfyUI 0.3.75 and its front end 1.32.9:

    COMFYUI_DIR=... python tests/data/saved_before_v3/make_fixture.py

It starts the real server (main.py --cpu) with this pack and the test pack, opens the front end in
headless Chromium, builds one graph that uses all ten DEADiff nodes with non-default values through
the front end's node API (as a user adding and wiring nodes), and writes what the front end itself
produces from it:

- workflow.json: the UI-format workflow (`app.graph.serialize()`, what "Save" writes);
- prompt.json: the API-format prompt (`app.graphToPrompt().output`, what "Queue" sends);
- object_info.json: the server's /object_info entries of the ten nodes (the node contract then).

The graph runs on the test pack's tiny SD1.5 (DEADiffTest_TinySD15) and a synthetic DEADiff file
named deadiff_v1.ckpt; the two saved-token files it loads (input/deadiff/fixture_style.safetensors and
fixture_content.safetensors) are made by the test before it runs the graph.
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent.parent
sys.path.insert(0, str(TESTS))

import conftest  # noqa: E402  (the tests' server helpers)
import deadiff_fakes  # noqa: E402

PACK_NODES = ["DEADiffModelLoader", "DEADiffStyleEncoder", "DEADiffContentEncoder", "DEADiffApply",
              "DEADiffMixStyles", "DEADiffMixContents", "DEADiffSaveTokens", "DEADiffLoadStyle",
              "DEADiffLoadContent", "DEADiffRouting"]

# node key -> (type, position, {widget: value}); links: (from key, output slot, to key, input name)
NODES = {
    "tiny": ("DEADiffTest_TinySD15", [0, 0], {"seed": 0}),
    "pos": ("CLIPTextEncode", [350, 0], {"text": "a castle at dusk"}),
    "neg": ("CLIPTextEncode", [350, 250], {"text": "lowres"}),
    "loader": ("DEADiffModelLoader", [0, 500], {"deadiff_name": "deadiff_v1.ckpt"}),
    "image_a": ("DEADiffTest_ImageFromSeed", [0, 650], {"seed": 7, "width": 120, "height": 90, "batch_size": 2}),
    "image_b": ("DEADiffTest_ImageFromSeed", [0, 900], {"seed": 11, "width": 64, "height": 64, "batch_size": 1}),
    "style": ("DEADiffStyleEncoder", [350, 550], {"batch_mode": "average"}),
    "content": ("DEADiffContentEncoder", [350, 800], {}),
    "load_style": ("DEADiffLoadStyle", [350, 1050], {"tokens_file": "fixture_style.safetensors"}),
    "load_content": ("DEADiffLoadContent", [350, 1250], {"tokens_file": "fixture_content.safetensors"}),
    "mix_styles": ("DEADiffMixStyles", [700, 550], {"mode": "weighted sum", "weight_1": 0.7, "weight_2": 0.3}),
    "mix_contents": ("DEADiffMixContents", [700, 850], {"mode": "concatenate", "weight_1": 1.0,
                                                         "weight_2": 0.5}),
    "routing": ("DEADiffRouting", [700, 1150], {"routing": "output_3=style*0.8\ninput_7=content*0.5"}),
    "mask": ("SolidMask", [700, 1400], {"value": 1.0, "width": 64, "height": 64}),
    "apply": ("DEADiffApply", [1100, 500], {"style_weight": 0.9, "content_weight": 0.6, "start_at": 0.05,
                                            "end_at": 0.95}),
    "save": ("DEADiffSaveTokens", [1100, 1000], {"filename_prefix": "deadiff/fixture_mix"}),
    "latent": ("EmptyLatentImage", [1100, 1250], {"width": 64, "height": 64, "batch_size": 1}),
    "sample": ("KSampler", [1500, 500], {"seed": 3, "steps": 2, "cfg": 8.0, "sampler_name": "euler",
                                         "scheduler": "normal", "denoise": 1.0}),
    "capture": ("DEADiffTest_CaptureLatent", [1900, 500], {"key": "saved_before_v3"}),
}
LINKS = [
    ("tiny", 1, "pos", "clip"), ("tiny", 1, "neg", "clip"),
    ("loader", 0, "style", "deadiff"), ("image_a", 0, "style", "image"),
    ("loader", 0, "content", "deadiff"), ("image_b", 0, "content", "image"),
    ("loader", 0, "load_style", "deadiff"), ("loader", 0, "load_content", "deadiff"),
    ("style", 0, "mix_styles", "style_1"), ("load_style", 0, "mix_styles", "style_2"),
    ("content", 0, "mix_contents", "content_1"), ("load_content", 0, "mix_contents", "content_2"),
    ("tiny", 0, "apply", "model"), ("loader", 0, "apply", "deadiff"),
    ("mix_styles", 0, "apply", "style"), ("mix_contents", 0, "apply", "content"),
    ("mask", 0, "apply", "attn_mask"), ("load_style", 0, "apply", "negative_style"),
    ("routing", 0, "apply", "routing"),
    ("mix_styles", 0, "save", "tokens"),
    ("apply", 0, "sample", "model"), ("pos", 0, "sample", "positive"), ("neg", 0, "sample", "negative"),
    ("latent", 0, "sample", "latent_image"), ("sample", 0, "capture", "samples"),
]

BUILD = """([nodes, links]) => {
    app.graph.clear();
    const made = {};
    for (const [key, [type, pos, widgets]] of Object.entries(nodes)) {
        const node = LiteGraph.createNode(type);
        node.pos = pos;
        app.graph.add(node);
        for (const [name, value] of Object.entries(widgets)) {
            const widget = node.widgets.find(w => w.name === name);
            if (!widget) throw new Error(`${type} has no widget ${name}`);
            widget.value = value;
        }
        made[key] = node;
    }
    for (const [from, slot, to, input] of links) {
        const target = made[to];
        const index = target.inputs.findIndex(i => i.name === input);
        if (index < 0) throw new Error(`${target.type} has no input ${input}`);
        made[from].connect(slot, target, index);
    }
    return Object.fromEntries(Object.entries(made).map(([k, n]) => [k, n.id]));
}"""


def main() -> None:
    base = conftest.make_base_directory("deadiff-fixture-")
    deadiff_fakes.place(base / "models" / "deadiff", "deadiff_v1.ckpt", seed=0)
    server = conftest.ComfyServer(conftest.comfyui_dir(), base)
    try:
        info = server.get("/object_info")
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"),
                                        args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1920, "height": 1080})
            page.goto(server.url)
            page.wait_for_function("window.app && window.app.graph && window.LiteGraph && "
                                   "Object.keys(LiteGraph.registered_node_types).includes('DEADiffApply')",
                                   timeout=120_000)
            ids = page.evaluate(BUILD, [NODES, LINKS])
            workflow = page.evaluate("() => app.graph.serialize()")
            prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
            browser.close()
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    (HERE / "workflow.json").write_text(json.dumps(workflow, indent=1) + "\n")
    (HERE / "prompt.json").write_text(json.dumps(prompt, indent=1) + "\n")
    (HERE / "object_info.json").write_text(json.dumps({n: info[n] for n in PACK_NODES}, indent=1) + "\n")
    (HERE / "node_ids.json").write_text(json.dumps(ids, indent=1) + "\n")
    print(f"wrote {len(workflow['nodes'])} nodes, {len(prompt)} prompt entries into {HERE}")


if __name__ == "__main__":
    main()
