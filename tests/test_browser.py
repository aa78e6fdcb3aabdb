"""The examples in the real ComfyUI front end: the real server, headless Chromium, each example loaded
the way the template browser loads it.

For each example: no missing-nodes warning and no missing-models warning (the weight files are
present under the names and folders the workflow's model metadata gives, and the saved style that
deadiff_load_saved_style names is in the server's output folder, written by running
deadiff_saved_style, as a user does before opening the load example), every node type known
to the front end, the front end's own serialization of the loaded graph equal to the file (so the
widget values are laid out as the front end lays them out), and the front end's `graphToPrompt`
equal to our converter's API prompt. A screenshot of each is saved (to $DEADIFF_SCREENSHOT_DIR when
set, e.g. docs/images for the README).

Needs Chromium (`apt-get install chromium`) and the `playwright` package (which drives that
Chromium; no browser download). Skipped, with the reason, when either is missing.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from test_examples import make_saved_style, tokens_file_path
from workflow_api import comfy_node_info, ui_to_api

pytestmark = [pytest.mark.slow, pytest.mark.server]

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "example_workflows"
NAMES = sorted(p.stem for p in EXAMPLES.glob("*.json"))
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_path():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser_page(comfy, comfy_server):
    # `comfy` (the in-process ComfyUI, for our converter) boots with asyncio.run, which cannot run
    # while Playwright's sync API holds this thread's event loop: so it is set up first
    chromium = chromium_path()
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install playwright; it drives the system Chromium)")

    base = comfy_server.base
    # every file the examples name, where their model metadata says it lives, so no dialog is expected
    created = []
    for name in NAMES:
        for node in json.loads((EXAMPLES / f"{name}.json").read_text())["nodes"]:
            for model in node.get("properties", {}).get("models", []):
                path = base / "models" / model["directory"] / model["name"]
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(b"name-only placeholder for the front-end check")
                    created.append(path)
            if node["type"] in ("DEADiffLoadStyle", "DEADiffLoadContent"):
                # the saved style it names, as deadiff_saved_style writes it (run in the in-process
                # ComfyUI: this server's DEADiff file is a name-only placeholder); its combo lists it
                path = tokens_file_path(comfy_server, node["widgets_values"][0])
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(make_saved_style(comfy), path)
                    created.append(path)
    settings = base / "user" / "default" / "comfy.settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps({"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False,
                                    "LiteGraph.Canvas.MinFontSizeForLOD": 0}))  # readable screenshots

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1920, "height": 1080})
        page.add_init_script("localStorage.setItem('vueNodesBannerDismissed', 'true')")
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(comfy_server.url)
        page.wait_for_function("window.app && window.app.graph && window.LiteGraph && "
                               "Object.keys(LiteGraph.registered_node_types).includes('DEADiffApply')",
                               timeout=120_000)
        page.evaluate("""() => {
            window.__deadiffWarnings = {nodes: [], models: []};
            const nodes = app.showMissingNodesError.bind(app), models = app.showMissingModelsError.bind(app);
            app.showMissingNodesError = (t) => { window.__deadiffWarnings.nodes.push(t); return nodes(t); };
            app.showMissingModelsError = (m, p) => { window.__deadiffWarnings.models.push(m); return models(m, p); };
        }""")
        yield page, errors
        browser.close()
    for path in created:
        path.unlink()


def test_front_end_lists_the_examples(browser_page):
    page, _ = browser_page
    templates = page.evaluate("() => app.api.getWorkflowTemplates()")
    assert sorted(templates["ComfyUI-DEADiff"]) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_example_loads_cleanly_in_the_front_end(comfy, browser_page, name, tmp_path):
    page, errors = browser_page
    workflow = json.loads((EXAMPLES / f"{name}.json").read_text())
    result = page.evaluate("""async (name) => {
        window.__deadiffWarnings.nodes.length = 0;
        window.__deadiffWarnings.models.length = 0;
        // as the template browser does: fetch from the pack's template route, load as a template
        const wf = await (await fetch(`/api/workflow_templates/ComfyUI-DEADiff/${name}.json`)).json();
        await app.loadGraphData(wf, true, true, name, {openSource: "template"});
        await new Promise(r => setTimeout(r, 300));
        const prompt = await app.graphToPrompt();
        return {
            warnings: JSON.parse(JSON.stringify(window.__deadiffWarnings)),
            unknown: app.graph.nodes.filter(n => !LiteGraph.registered_node_types[n.type]).map(n => n.type),
            errors: app.graph.nodes.filter(n => n.has_errors).map(n => n.type),
            // the pack's combo values (model files, saved styles, modes) that the front end does not offer
            offList: app.graph.nodes.filter(n => n.type.startsWith("DEADiff")).flatMap(n => (n.widgets || [])
                .filter(w => w.type === "combo")
                .filter(w => {
                    const values = typeof w.options.values === "function" ? w.options.values() : w.options.values;
                    return !values.includes(w.value);
                })
                .map(w => `${n.type}.${w.name}=${w.value}`)),
            serialized: app.graph.serialize(),
            output: prompt.output,
        };
    }""", name)
    assert result["warnings"]["nodes"] == [], f"missing-nodes warning: {result['warnings']['nodes']}"
    assert result["warnings"]["models"] == [], f"missing-models warning: {result['warnings']['models']}"
    assert result["unknown"] == [] and result["errors"] == []
    assert result["offList"] == [], "values the front end's lists do not offer"
    # the front end re-serializes the graph it built from the file with the same widget values
    ours = {n["id"]: n["widgets_values"] for n in workflow["nodes"]}
    theirs = {n["id"]: n.get("widgets_values") for n in result["serialized"]["nodes"]}
    assert theirs == ours
    # and queues exactly the prompt our converter builds from the file
    assert result["output"] == json.loads(json.dumps(ui_to_api(workflow, comfy_node_info(comfy.nodes))))
    assert not [e for e in errors if "DEADiff" in e], errors

    clip = page.evaluate("""() => {  // fit the whole graph into the free part of the window, then clip to it
        const ds = app.canvas.ds, rect = app.canvas.canvas.getBoundingClientRect();
        const free = {left: 80, top: 120, right: window.innerWidth - 20, bottom: window.innerHeight - 70};
        const title = LiteGraph.NODE_TITLE_HEIGHT, pad = 12;
        const xs = [], ys = [];
        for (const n of app.graph.nodes) {
            xs.push(n.pos[0], n.pos[0] + n.size[0]);
            ys.push(n.pos[1] - title, n.pos[1] + n.size[1]);
        }
        const x0 = Math.min(...xs), y0 = Math.min(...ys), w = Math.max(...xs) - x0, h = Math.max(...ys) - y0;
        const scale = Math.min((free.right - free.left - 2 * pad) / w, (free.bottom - free.top - 2 * pad) / h);
        ds.scale = scale;
        ds.offset[0] = (free.left + pad - rect.left) / scale - x0;
        ds.offset[1] = (free.top + pad - rect.top) / scale - y0;
        app.canvas.setDirty(true, true);
        return {x: free.left, y: free.top, width: w * scale + 2 * pad, height: h * scale + 2 * pad};
    }""")
    page.wait_for_timeout(500)
    folder = Path(os.environ.get("DEADIFF_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    shot = folder / f"{name}.png"
    page.screenshot(path=str(shot), clip=clip)
    assert shot.stat().st_size > 20_000
