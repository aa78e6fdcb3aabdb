"""The headless runner (`deadiff-run`, `python -m deadiff_runner.cli`), run as a user runs it: a subprocess.

Weights are placed where the README says (a base folder's models/deadiff/deadiff_v1.ckpt, here a tiny
synthetic one in the official layout). A real SD1.5 file cannot exist in the suite, so the runs that
get as far as sampling use the runner's documented test hook, DEADIFF_RUNNER_TEST_PACK, which loads
the test node pack and swaps Load Checkpoint for its tiny SD1.5; the missing-file runs do not use it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import deadiff_fakes
from conftest import REPO, TEST_PACK, comfyui_dir

OFFICIAL_NEGATIVE_START = "over-exposure, under-exposure, saturated"


def run_cli(*args, base: Path | None = None, test_hook: bool = False, cwd: Path | None = None, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "DEADIFF_RUNNER_TEST_PACK"}
    env["COMFYUI_DIR"] = str(comfyui_dir())
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if test_hook:
        env["DEADIFF_RUNNER_TEST_PACK"] = str(TEST_PACK)
    command = [sys.executable, "-m", "deadiff_runner.cli", *args]
    if base is not None:
        command += ["--base-directory", str(base)]
    return subprocess.run(command, cwd=cwd or REPO, env=env, capture_output=True, text=True, timeout=timeout)


def write_reference(path: Path, seed: int) -> Path:
    gen = __import__("torch").Generator().manual_seed(seed)
    pixels = __import__("torch").rand(72, 88, 3, generator=gen)
    Image.fromarray((pixels.numpy() * 255).astype("uint8")).save(path)
    return path


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A ComfyUI base folder with the DEADiff weights where the README puts them, and a style image."""
    base = tmp_path_factory.mktemp("runner-base")
    (base / "models" / "deadiff").mkdir(parents=True)
    deadiff_fakes.place(base / "models" / "deadiff", "deadiff_v1.ckpt", seed=0)
    work = tmp_path_factory.mktemp("runner-work")
    return base, write_reference(work / "my style.png", seed=4), work


def test_runs_the_default_example_and_embeds_the_workflow(installed):
    base, style, work = installed
    output = work / "pictures" / "lighthouse.png"
    result = run_cli("--style", str(style), "--prompt", "a red barn in a field", "--seed", "7", "--steps", "2",
                     "--width", "64", "--height", "64", "--output", str(output), base=base, test_hook=True)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().splitlines()[-1] == str(output)
    assert "TEST HOOK" in result.stderr
    assert "KSampler" in result.stderr and "2/2" in result.stderr  # progress: node lines and the step bar
    # the style image went into ComfyUI's input folder, as an upload in the UI does
    assert (base / "input" / "my style.png").read_bytes() == style.read_bytes()
    # the picture was moved out of ComfyUI's output folder, and the folder its Save Image made with it
    assert not (base / "output" / "DEADiff").exists()

    with Image.open(output) as picture:
        assert picture.size == (64, 64)
        workflow = json.loads(picture.text["workflow"])
        prompt = json.loads(picture.text["prompt"])
    # the embedded workflow is the example with this run's values, so it reopens in ComfyUI as it ran
    ui = {n["type"]: n for n in workflow["nodes"]}
    assert ui["LoadImage"]["widgets_values"][0] == "my style.png"
    assert ui["KSampler"]["widgets_values"][:4] == [7, "fixed", 2, 8.0]
    assert ui["EmptyLatentImage"]["widgets_values"] == [64, 64, 1]
    texts = [n["widgets_values"][0] for n in workflow["nodes"] if n["type"] == "CLIPTextEncode"]
    assert "a red barn in a field" in texts
    assert any(t.startswith(OFFICIAL_NEGATIVE_START) for t in texts), "the official negative is kept"
    assert any(n["type"] == "Note" for n in workflow["nodes"])
    sampler = next(n for n in prompt.values() if n["class_type"] == "KSampler")
    assert sampler["inputs"]["seed"] == 7 and sampler["inputs"]["steps"] == 2
    assert {n["class_type"] for n in prompt.values()} >= {"DEADiffModelLoader", "DEADiffStyleEncoder", "DEADiffApply"}


def test_saved_style_then_load_saved_style(installed):
    """The saved-style pair as a user runs it: the load example first says what is missing, the saved-style
    example writes the style to ComfyUI's output folder (where the UI writes it), the load example uses it."""
    base, style, work = installed
    tokens = base / "output" / "deadiff" / "my_style_00001_.safetensors"
    assert not tokens.exists()
    small = ("--steps", "2", "--width", "64", "--height", "64")
    check = run_cli("--check", "--workflow", "load_saved_style", base=base, test_hook=True)
    assert check.returncode == 2, check.stderr[-4000:]
    assert f"MISSING  saved tokens (Saved style)  {tokens}" in check.stdout
    assert "deadiff_saved_style writes output/deadiff/my_style_00001_.safetensors" in check.stderr

    saved = run_cli("--workflow", "saved_style", "--style", str(style), *small, "--output", str(work / "saved.png"),
                    base=base, test_hook=True)
    assert saved.returncode == 0, saved.stderr[-4000:]
    assert tokens.is_file() and (work / "saved.png").is_file()
    assert f"saved tokens {tokens}" in saved.stderr and "'my_style_00001_.safetensors [output]'" in saved.stderr
    assert saved.stdout.strip().splitlines()[-1] == str(work / "saved.png")

    loaded = run_cli("--workflow", "load_saved_style", *small, "--output", str(work / "loaded.png"), base=base,
                     test_hook=True)
    assert loaded.returncode == 0, loaded.stderr[-4000:]
    with Image.open(work / "loaded.png") as picture:
        prompt = json.loads(picture.text["prompt"])
    (load,) = [n for n in prompt.values() if n["class_type"] == "DEADiffLoadStyle"]
    assert load["inputs"]["tokens_file"] == "my_style_00001_.safetensors [output]"
    assert sorted(p.name for p in tokens.parent.iterdir()) == [tokens.name], "loading saves nothing"


def test_missing_weights_are_named_with_folder_and_source(tmp_path):
    base = tmp_path / "empty-comfy"
    (base / "models").mkdir(parents=True)
    style = write_reference(tmp_path / "ref.png", seed=1)
    output = tmp_path / "out.png"
    result = run_cli("--style", str(style), "--output", str(output), base=base)
    assert result.returncode == 2, result.stderr[-4000:]
    message = result.stderr
    assert "deadiff_v1.ckpt" in message and "qth/DEADiff" in message
    assert f"put it in:   {base / 'models' / 'deadiff'}{os.sep}" in message
    assert "v1-5-pruned-emaonly.safetensors" in message and "stable-diffusion-v1-5" in message
    assert f"put it in:   {base / 'models' / 'checkpoints'}{os.sep}" in message
    assert "nothing was loaded" in message
    assert not output.exists()
    # no file copied before the check (ComfyUI may create empty folders at start: newer ones make input/3d)
    copied = [p for p in (base / "input").rglob("*") if not p.is_dir()] if (base / "input").exists() else []
    assert copied == [], "nothing copied before the check"


def test_check_reports_installed_and_missing_files(installed, tmp_path):
    base, style, work = installed
    # the controlnet example also needs the canny ControlNet, which this base folder lacks; the
    # checkpoint and ControlNet loaders are swapped by the test hook, so only real files are reported
    complete = run_cli("--check", "--style", str(style), base=base, test_hook=True)
    assert complete.returncode == 0, complete.stderr[-4000:]
    assert "ok       deadiff/deadiff_v1.ckpt" in complete.stdout
    assert "Everything this workflow needs is installed." in complete.stdout

    models = tmp_path / "models"
    (models / "deadiff").mkdir(parents=True)
    empty_base = tmp_path / "base"
    empty_base.mkdir()
    missing = run_cli("--check", "--workflow", "style_mixing", "--models-dir", str(models), base=empty_base)
    assert missing.returncode == 2
    assert "MISSING  deadiff/deadiff_v1.ckpt" in missing.stdout
    assert f"-> {models / 'deadiff'}{os.sep}" in missing.stdout  # --models-dir is looked in first
    assert "MISSING  checkpoints/v1-5-pruned-emaonly.safetensors" in missing.stdout
    assert "style image (Style reference 2)" in missing.stdout
    assert "pass --style IMAGE" in missing.stderr


def test_argument_errors_exit_2_before_booting(tmp_path):
    result = run_cli("--style", str(tmp_path / "nope.png"))
    assert result.returncode == 2 and "nope.png: no such file" in result.stderr
    result = run_cli("--workflow", "no_such_example")
    assert result.returncode == 2
    assert "deadiff_style_transfer" in result.stderr and "deadiff_controlnet" in result.stderr
    listing = run_cli("--list")
    assert listing.returncode == 0
    assert [line.split()[0] for line in listing.stdout.splitlines()] == sorted(
        p.stem for p in (REPO / "example_workflows").glob("*.json"))
