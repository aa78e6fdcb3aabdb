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


def run_cli(
    *args, base: Path | None = None, test_hook: bool = False, cwd: Path | None = None, timeout=600, env_extra=None
):
    env = {k: v for k, v in os.environ.items() if k not in ("DEADIFF_RUNNER_TEST_PACK", "DEADIFF_MODELS_DIR")}
    env.update(env_extra or {})
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
    result = run_cli(
        "--style",
        str(style),
        "--prompt",
        "a red barn in a field",
        "--seed",
        "7",
        "--steps",
        "2",
        "--width",
        "64",
        "--height",
        "64",
        "--output",
        str(output),
        base=base,
        test_hook=True,
    )
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

    saved = run_cli(
        "--workflow",
        "saved_style",
        "--style",
        str(style),
        *small,
        "--output",
        str(work / "saved.png"),
        base=base,
        test_hook=True,
    )
    assert saved.returncode == 0, saved.stderr[-4000:]
    assert tokens.is_file() and (work / "saved.png").is_file()
    assert f"saved tokens {tokens}" in saved.stderr and "'my_style_00001_.safetensors [output]'" in saved.stderr
    assert saved.stdout.strip().splitlines()[-1] == str(work / "saved.png")

    loaded = run_cli(
        "--workflow", "load_saved_style", *small, "--output", str(work / "loaded.png"), base=base, test_hook=True
    )
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
        p.stem for p in (REPO / "example_workflows").glob("*.json")
    )


# ------------------------------------------------------------------------ batches, wrong files, models folder


def test_a_batch_runs_in_one_session_with_its_parameters_in_each_png(installed, tmp_path):
    base, style, work = installed
    second = write_reference(tmp_path / "second style.png", seed=9)
    jobs = tmp_path / "jobs.json"
    jobs.write_text(json.dumps({"prompt": ["a red barn", "a blue boat"], "style": [str(style), str(second)]}))
    result = run_cli(
        "--jobs",
        str(jobs),
        "--seed",
        "11",
        "--steps",
        "2",
        "--width",
        "64",
        "--height",
        "64",
        "--output",
        str(tmp_path / "out") + "/",
        base=base,
        test_hook=True,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    written = [Path(line) for line in result.stdout.strip().splitlines()]
    assert [p.name for p in written] == [f"deadiff_style_transfer_00{i}_11.png" for i in range(1, 5)]
    seen = set()
    for path in written:
        with Image.open(path) as picture:
            job = json.loads(picture.text["deadiff_job"])
            prompt = json.loads(picture.text["prompt"])
        texts = {n["inputs"]["text"] for n in prompt.values() if n["class_type"] == "CLIPTextEncode"}
        assert job["prompt"] in texts and job["seed"] == 11 and job["steps"] == 2
        seen.add((job["prompt"], job["style"][0]))
    assert seen == {(p, s) for p in ("a red barn", "a blue boat") for s in ("my style.png", "second style.png")}
    assert "4 of 4 jobs done" in result.stderr
    reused = next(line for line in result.stderr.splitlines() if "reused from ComfyUI's cache" in line)
    assert "Load DEADiff Model" in reused and "Load Checkpoint (SD1.5)" in reused  # one load for the batch
    assert result.stderr.count("ComfyUI boot") == 1


def sd15_standin(path: Path) -> Path:
    """A file with SD1.5's top-level key layout (UNet, VAE, text encoder), as a checkpoint has."""
    import torch
    from safetensors.torch import save_file

    save_file(
        {
            "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4),
            "first_stage_model.decoder.conv_in.weight": torch.zeros(2, 2),
            "cond_stage_model.transformer.text_model.embeddings.position_ids": torch.zeros(1, 77),
        },
        str(path),
    )
    return path


def test_a_file_in_the_wrong_folder_is_named_for_what_it_is(tmp_path):
    base = tmp_path / "base"
    (base / "models" / "deadiff").mkdir(parents=True)
    (base / "models" / "checkpoints").mkdir(parents=True)
    sd15_standin(base / "models" / "deadiff" / "v1-5-pruned-emaonly.safetensors")
    deadiff_fakes.place(base / "models" / "checkpoints", "deadiff_v1.ckpt", seed=0)
    style = write_reference(tmp_path / "ref.png", seed=2)
    check = run_cli("--check", "--style", str(style), base=base)
    assert check.returncode == 2
    assert (
        f"{base / 'models' / 'deadiff' / 'v1-5-pruned-emaonly.safetensors'} is a Stable Diffusion checkpoint: "
        "it belongs in models/checkpoints"
    ) in check.stderr
    assert (
        f"{base / 'models' / 'checkpoints' / 'deadiff_v1.ckpt'} has this name but sits in checkpoints/: move it "
        f"to {base / 'models' / 'deadiff'}{os.sep}"
    ) in check.stderr
    chosen = run_cli(
        "--style",
        str(style),
        "--set",
        "Load DEADiff Model.deadiff_name=v1-5-pruned-emaonly.safetensors",
        base=base,
        test_hook=True,
    )
    assert chosen.returncode == 2, chosen.stderr[-3000:]
    assert "is set to v1-5-pruned-emaonly.safetensors, which is a Stable Diffusion checkpoint" in chosen.stderr
    assert "Traceback" not in chosen.stderr and "KSampler" not in chosen.stderr  # refused before anything ran


def test_check_names_the_models_folder_and_why(tmp_path):
    """Outside a ComfyUI, with the pinned development ComfyUI, the weights go to the per-user data folder
    (or $DEADIFF_MODELS_DIR), never into the cache that holds that ComfyUI."""
    env = {"XDG_DATA_HOME": str(tmp_path / "xdg")}
    result = run_cli("--check", env_extra=env)
    home = tmp_path / "xdg" / "comfyui-deadiff" / "models"
    assert f"models folder  {home}" in result.stdout, result.stdout + result.stderr[-2000:]
    assert "the per-user data folder" in result.stdout
    assert f"MISSING  deadiff/deadiff_v1.ckpt  -> {home / 'deadiff'}{os.sep}" in result.stdout
    shared = tmp_path / "shared"
    result = run_cli("--check", env_extra={**env, "DEADIFF_MODELS_DIR": str(shared)})
    assert f"models folder  {shared}" in result.stdout and "set by $DEADIFF_MODELS_DIR" in result.stdout


def test_download_convert_and_a_second_run_downloads_nothing(tmp_path):
    """A fresh machine: nothing installed, a stand-in hub behind HF_ENDPOINT; --download --convert fetches
    deadiff_v1.ckpt, converts it once and draws; the second run sends the hub nothing."""
    from hub_standin import HubStandIn

    source = tmp_path / "hub-files"
    source.mkdir()
    deadiff_fakes.place(source, "deadiff_v1.ckpt", seed=0)
    hub = HubStandIn()
    hub.add("qth/DEADiff", "deadiff_v1.ckpt", (source / "deadiff_v1.ckpt").read_bytes())
    base = tmp_path / "fresh"
    base.mkdir()
    style = write_reference(tmp_path / "ref.png", seed=5)
    env = {"HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf")}
    small = ("--steps", "2", "--width", "64", "--height", "64", "--seed", "1")
    try:
        first = run_cli(
            "--download",
            "--convert",
            "--style",
            str(style),
            "--prompt",
            "a lighthouse",
            *small,
            "--output",
            str(tmp_path / "first.png"),
            base=base,
            test_hook=True,
            env_extra=env,
        )
        assert first.returncode == 0, first.stderr[-4000:]
        ckpt = base / "models" / "deadiff" / "deadiff_v1.ckpt"
        compact = base / "models" / "deadiff" / "deadiff_v1_compact.safetensors"
        assert ckpt.read_bytes() == (source / "deadiff_v1.ckpt").read_bytes()
        assert compact.is_file() and (compact.stat().st_mode & 0o777) == 0o644
        assert len(hub.gets()) == 1
        assert f"uses {compact}" in first.stderr
        with Image.open(tmp_path / "first.png") as picture:
            prompt = json.loads(picture.text["prompt"])
        (loader,) = [n for n in prompt.values() if n["class_type"] == "DEADiffModelLoader"]
        assert loader["inputs"]["deadiff_name"] == "deadiff_v1_compact.safetensors"
        seen = len(hub.file_requests())
        second = run_cli(
            "--download",
            "--convert",
            "--style",
            str(style),
            "--prompt",
            "a lighthouse",
            *small,
            "--output",
            str(tmp_path / "second.png"),
            base=base,
            test_hook=True,
            env_extra=env,
        )
        assert second.returncode == 0, second.stderr[-4000:]
        assert len(hub.file_requests()) == seen, "the second run asks the hub nothing"
        assert "converting" not in second.stderr
    finally:
        hub.close()


def test_a_failing_node_is_one_line_and_minus_v_adds_the_traceback(tmp_path):
    base = tmp_path / "base"
    (base / "models" / "deadiff").mkdir(parents=True)
    (base / "models" / "deadiff" / "deadiff_v1.ckpt").write_bytes(b"PK\x03\x04 not really a zip archive")
    style = write_reference(tmp_path / "ref.png", seed=2)
    small = ("--steps", "1", "--width", "64", "--height", "64", "--output", str(tmp_path / "never.png"))
    quiet = run_cli("--style", str(style), *small, base=base, test_hook=True)
    assert quiet.returncode == 1, quiet.stderr[-3000:]
    failed = [line for line in quiet.stderr.splitlines() if "failed:" in line]
    assert len(failed) == 1 and failed[0].startswith("deadiff-run: node 2 (Load DEADiff Model) failed: ")
    assert "truncated or corrupt" in failed[0] and "download it again" in failed[0]
    assert "Traceback" not in quiet.stderr and "!!! Exception" not in quiet.stderr
    loud = run_cli("--style", str(style), *small, "-v", base=base, test_hook=True)
    assert loud.returncode == 1 and "Traceback" in loud.stderr
    assert not (tmp_path / "never.png").exists()
