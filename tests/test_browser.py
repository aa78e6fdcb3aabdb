"""The examples in the real ComfyUI front end, used as a user uses it: the real server (main.py), headless
Chromium, and only what a user sees and does. The template browser (Templates ▸ ComfyUI-DEADiff ▸ the
example) loads each example; what the front end shows is read from the page (dialogs, toasts, the
error overlay of newer front ends); Run queues it; ComfyUI's HTTP API then says what was queued.

For each example: no warning of any kind after loading it (missing nodes, missing models, missing
media: the weight files it names are present as name-only placeholders where its model metadata puts
them, its reference images were uploaded to the server's input/, and the saved style that
deadiff_load_saved_style names was written by running deadiff_saved_style, as a user does before
opening that example); Run queues exactly the prompt our converter builds from the file, with the
front end's own serialization of the graph (its workflow, in the queued item's extra_pnginfo) holding
the file's widget values; the run then stops at a placeholder weight file (no real weights exist in
the suite), which shows that ComfyUI accepted everything before it. A control case loads a workflow
with an unknown node and an absent model and must be warned about, so the check sees what the front
end shows. A screenshot of each example is saved (to $DEADIFF_SCREENSHOT_DIR when set, e.g. docs/images).

The front end is the comfyui-frontend-package that the ComfyUI under test pins (1.32.9 for ComfyUI
0.3.75, 1.49.6 for 0.33.0), or the one in $DEADIFF_FRONT_END_ROOT (`COMFYUI_FRONTEND=... scripts/test.sh`).

Needs Chromium (`apt-get install chromium`) and the `playwright` package (which drives that Chromium; no
browser download). Skipped, with the reason, when either is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from conftest import execution_error, front_end_version, start_server, stop_server
from test_examples import make_saved_style, tokens_file_path
from ui_to_api import comfy_node_info, ui_to_api

pytestmark = [pytest.mark.slow, pytest.mark.server]

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "example_workflows"
NAMES = sorted(p.stem for p in EXAMPLES.glob("*.json"))
PACK = "ComfyUI-DEADiff"  # the template browser's category: the pack's folder in custom_nodes
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PLACEHOLDER = b"name-only placeholder for the front-end check"
# what front ends show when something is wrong: dialogs (1.32), the error overlay (role=status) and its
# "View details" panel (1.49 and later), toasts and alerts
WARNING_SELECTORS = ["[role=dialog]", "[role=alertdialog]", "[role=alert]", "[role=status]", ".p-toast-message"]


def chromium_path():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def example(name: str) -> dict:
    return json.loads((EXAMPLES / f"{name}.json").read_text(encoding="utf-8"))


class FrontEnd:
    """One browser on the test server; `open()` gives a fresh tab with the front end ready."""

    def __init__(self, browser, server):
        self.browser = browser
        self.server = server
        self.page_errors: list[str] = []

    def open(self):
        page = self.browser.new_page(viewport={"width": 1600, "height": 1000})
        page.add_init_script("localStorage.setItem('vueNodesBannerDismissed', 'true')")
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        page.goto(self.server.url)
        # the sidebar appears once the front end has set itself up (node definitions included)
        self.button(page, "Templates").wait_for(state="visible", timeout=120_000)
        page.wait_for_timeout(1000)
        return page

    @staticmethod
    def button(page, name: str):
        return page.get_by_role("button", name=name, exact=True).first

    def open_template(self, page, name: str) -> None:
        """Templates ▸ ComfyUI-DEADiff ▸ `name`, as a user clicks through the template browser."""
        self.button(page, "Templates").click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_text(PACK, exact=True).click()
        dialog.get_by_text(name, exact=True).first.click()
        dialog.wait_for(state="hidden", timeout=30_000)
        settle(page)

    def open_file(self, page, path: Path) -> None:
        """Workflow ▸ Open: the front end's file chooser, given `path`."""
        page.locator("#comfy-file-input").set_input_files(str(path))
        settle(page)

    def run(self, page) -> dict:
        """Click Run; return ComfyUI's answer to the POST /api/prompt the front end sent."""
        with page.expect_response(
            lambda r: r.url.endswith("/prompt") and r.request.method == "POST", timeout=60_000
        ) as answer:
            self.button(page, "Run").click()
        response = answer.value
        return {"status": response.status, **response.json()}


def settle(page, quiet_ms: int = 1500, timeout_ms: int = 20_000) -> None:
    """Wait until the front end has finished reacting to a load (its checks fetch model lists and
    media): no request for `quiet_ms`."""
    last = [time.monotonic()]
    page.on("request", lambda _: last.__setitem__(0, time.monotonic()))
    deadline = time.monotonic() + timeout_ms / 1000
    page.wait_for_timeout(300)
    while time.monotonic() - last[0] < quiet_ms / 1000 and time.monotonic() < deadline:
        page.wait_for_timeout(200)


def visible_warnings(page) -> list[str]:
    """The text of every dialog, alert, toast and status message the page shows now."""
    texts = []
    for selector in WARNING_SELECTORS:
        for element in page.locator(selector).all():
            if element.is_visible():
                text = " | ".join(line.strip() for line in element.inner_text().splitlines() if line.strip())
                if text:
                    texts.append(text)
    return texts


def warning_details(page) -> str:
    """What a user reads after clicking the warning's "View details" (newer front ends list missing
    node packs, models and media there), or the page's text where there is no such button."""
    details = page.get_by_role("button", name="View details")
    if details.count():
        details.first.click()
        page.wait_for_timeout(1000)
    return page.locator("body").inner_text()


def executed_part(prompt: dict) -> dict:
    """What ComfyUI executes of an API prompt, and each node's title."""
    return {
        node_id: (node["class_type"], node["inputs"], node.get("_meta", {}).get("title"))
        for node_id, node in prompt.items()
    }


def api_prompt_of(history_entry: dict) -> tuple[dict, dict]:
    """(prompt, extra_data) of a /history entry: its "prompt" is [number, id, prompt, extra_data, outputs]."""
    item = history_entry["prompt"]
    return item[2], item[3]


@pytest.fixture(scope="module")
def front_end(comfy):
    # `comfy` (the in-process ComfyUI, for our converter and for writing the saved style) boots with
    # asyncio.run, which cannot run while Playwright's sync API holds this thread's event loop: so it
    # is set up first
    chromium = chromium_path()
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install playwright; it drives the system Chromium)")

    saved_style = make_saved_style(comfy)  # also writes the examples' reference images into comfy's input/
    # a server of its own: everything placed below lives in its base folder and goes with it, whatever fails
    server = start_server("deadiff-browser-")
    try:
        base = server.base
        for name in NAMES:
            for node in example(name)["nodes"]:
                # every file the example names, where its model metadata says it lives (the LoRA
                # example names the user's own LoRA, which has no such metadata)
                files = [(m["directory"], m["name"]) for m in node.get("properties", {}).get("models", [])]
                if node["type"] == "LoraLoader":
                    files.append(("loras", node["widgets_values"][0]))
                for directory, filename in files:
                    path = base / "models" / directory / filename
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(PLACEHOLDER)
                # its reference images, uploaded as the front end uploads them
                if node["type"] == "LoadImage":
                    image = node["widgets_values"][0]
                    assert server.upload_image(image, (comfy.base / "input" / image).read_bytes()) == image
                # the saved style that deadiff_load_saved_style names, where deadiff_saved_style writes it
                if node["type"] in ("DEADiffLoadStyle", "DEADiffLoadContent"):
                    path = tokens_file_path(server, node["widgets_values"][0])
                    path.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(saved_style, path)
        settings = base / "user" / "default" / "comfy.settings.json"
        settings.parent.mkdir(parents=True, exist_ok=True)
        settings.write_text(
            json.dumps(
                {
                    "Comfy.TutorialCompleted": True,
                    "Comfy.Minimap.Visible": False,
                    "LiteGraph.Canvas.MinFontSizeForLOD": 0,
                }
            )
        )  # readable screenshots
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
            try:
                yield FrontEnd(browser, server)
            finally:
                browser.close()
    finally:
        stop_server(server)


def test_the_served_front_end_is_the_one_under_test(front_end):
    page = front_end.open()
    try:
        # the version the front end reports about itself (Settings ▸ About shows the same constant)
        served = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__")
    finally:
        page.close()
    print(f"front end {served}")
    assert served == front_end_version()


def test_template_browser_lists_the_examples(front_end):
    # ComfyUI's HTTP API lists the pack's example_workflows ...
    assert sorted(front_end.server.get("/api/workflow_templates")[PACK]) == NAMES
    # ... and the template browser shows them under the pack's name
    page = front_end.open()
    try:
        FrontEnd.button(page, "Templates").click()
        dialog = page.get_by_role("dialog")
        dialog.get_by_text(PACK, exact=True).click()
        for name in NAMES:
            dialog.get_by_text(name, exact=True).first.wait_for(state="visible", timeout=10_000)
    finally:
        page.close()


def test_the_check_sees_a_missing_node_and_a_missing_model(front_end, tmp_path):
    """The control case: what the front end warns about, this check reads."""
    workflow = example("deadiff_style_transfer")
    for node in workflow["nodes"]:
        if node["type"] == "DEADiffApply":
            node["type"] = "DEADiffNoSuchNode"
        if node["type"] == "CheckpointLoaderSimple":
            node["widgets_values"][0] = "deadiff_absent_model.safetensors"
            node["properties"]["models"][0]["name"] = "deadiff_absent_model.safetensors"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(workflow))
    page = front_end.open()
    try:
        front_end.open_file(page, path)
        warnings = visible_warnings(page)
        details = warning_details(page)
    finally:
        page.close()
    assert warnings, "the front end showed nothing for a workflow with a missing node and a missing model"
    assert re.search(r"missing node", details, re.IGNORECASE), details[-3000:]
    assert "deadiff_absent_model.safetensors" in details, details[-3000:]


@pytest.mark.parametrize("name", NAMES)
def test_example_loads_cleanly_and_runs_from_the_front_end(comfy, front_end, name, tmp_path):
    workflow = example(name)
    page = front_end.open()
    try:
        front_end.open_template(page, name)
        warnings = visible_warnings(page)
        details = warning_details(page) if warnings else ""
        assert warnings == [], f"the front end warned after loading {name}: {warnings}\n{details[-3000:]}"

        fit = page.get_by_role("button", name=re.compile(r"^Fit View"))
        if fit.count():
            fit.first.click()
        else:
            page.keyboard.press(".")
        page.wait_for_timeout(500)
        folder = Path(os.environ.get("DEADIFF_SCREENSHOT_DIR") or tmp_path)
        folder.mkdir(parents=True, exist_ok=True)
        shot = folder / f"{name}.png"
        page.screenshot(path=str(shot))
        assert shot.stat().st_size > 20_000

        queued = front_end.run(page)
    finally:
        page.close()
    assert queued["status"] == 200 and not queued.get("node_errors"), queued
    entry = front_end.server.wait(queued["prompt_id"])
    prompt, extra_data = api_prompt_of(entry)
    # the front end queued exactly the prompt our converter builds from the file (node types, inputs,
    # titles; front ends since 1.5x also copy each node's pack and version into `_meta`) ...
    ours = json.loads(json.dumps(ui_to_api(workflow, comfy_node_info(comfy.nodes))))
    assert executed_part(prompt) == executed_part(ours)
    # ... with its own serialization of the graph holding the file's widget values (front ends since
    # 1.4x leave `widgets_values` out of nodes that have no widgets)
    serialized = extra_data["extra_pnginfo"]["workflow"]
    ours = {n["id"]: n.get("widgets_values") or [] for n in workflow["nodes"]}
    theirs = {n["id"]: n.get("widgets_values") or [] for n in serialized["nodes"]}
    assert theirs == ours
    # ComfyUI accepted every node, and the run stopped only at a name-only placeholder weight file
    error = execution_error(entry)
    assert error is not None, "a placeholder weight file loaded?"
    loaders = {
        str(n["id"]) for n in workflow["nodes"] if n.get("properties", {}).get("models") or n["type"] == "LoraLoader"
    }
    assert str(error["node_id"]) in loaders, error
    assert not [e for e in front_end.page_errors if "DEADiff" in e], front_end.page_errors
