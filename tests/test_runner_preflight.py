"""What the runner checks before ComfyUI boots, and the batch description (deadiff_runner.jobs).

The argument errors are run with `--comfyui-dir` pointing at a folder that is not a ComfyUI: a runner
that booted (or tried to) would say so instead of naming the wrong argument, so each of these shows
the argument was refused first. The snapshot the pre-boot check relies on is compared with the live
node definitions of the running ComfyUI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from PIL import Image

from conftest import REPO

from deadiff_runner import jobs as jobs_mod
from deadiff_runner import known_nodes
from deadiff_runner import models_home


def run_cli(*args, cwd: Path, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k not in ("DEADIFF_RUNNER_TEST_PACK", "COMFYUI_DIR")}
    env["PYTHONPATH"] = str(REPO)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "deadiff_runner.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("preflight")
    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (40, 30), (len(name) * 40, 90, 20)).save(folder / name)
    (folder / "not_an_image.png").write_text("hello")
    (folder / "not_comfy").mkdir()
    return folder


ARGUMENT_ERRORS = [
    (["--width", "500"], "--width 500: use a positive multiple of 8"),
    (["--steps", "0"], "--steps 0: give at least 1 sampling step"),
    (["--set", "Nope.x=1"], "no node with id, title, type or name 'Nope'"),
    (["--set", "Apply Disentangled Conditioning.end_at=2"], "end_at 2.0 is above its maximum 1.0"),
    (["--set", "Apply Disentangled Conditioning.endat=0.5"], "has no widget 'endat'"),
    (["--set", "5.style_weight=strong"], "'strong' is not a valid FLOAT"),
    (["--set", "style_weight=1"], "write NODE.INPUT=VALUE"),
    (
        ["--workflow", "style_mixing", "--style", "a.png", "--style", "b.png", "--style", "c.png"],
        "this workflow has 2 style image(s): give --style 2 time(s)",
    ),
    (["--workflow", "controlnet", "--content", "a.png"], "--content given, but this workflow has no content image"),
    (["--style", "not_an_image.png"], "not an image ComfyUI can read"),
    (["--style", "missing.png"], "missing.png: no such file"),
    (["--output", "picture.jpg"], "the picture is a PNG"),
    (["--server", "127.0.0.1:8188"], "give the server's URL"),
    (["--seed", "-3"], "a seed is between 0 and 2**64-1"),
]


@pytest.mark.parametrize("args,message", ARGUMENT_ERRORS, ids=[" ".join(a) for a, _ in ARGUMENT_ERRORS])
def test_argument_errors_are_one_line_exit_2_before_the_boot(images, args, message):
    result = (
        run_cli("--comfyui-dir", str(images / "not_comfy"), "--style", "a.png", *args, cwd=images)
        if "--style" not in args and "--workflow" not in args
        else run_cli("--comfyui-dir", str(images / "not_comfy"), *args, cwd=images)
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr, result.stderr
    assert "not a ComfyUI folder" not in result.stderr, "the argument must be refused before any boot"
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_valid_arguments_reach_the_boot(images):
    """The display name the runner prints is accepted, and so is a batch: then the next step is the boot."""
    result = run_cli(
        "--comfyui-dir",
        str(images / "not_comfy"),
        "--style",
        "a.png",
        "--style",
        "b.png",
        "--prompt",
        "one",
        "--prompt",
        "two",
        "--set",
        "Apply Disentangled Conditioning.end_at=0.5",
        "--set",
        "deadiffapply.style_weight=0.8",
        cwd=images,
    )
    assert result.returncode == 2
    assert "is not a ComfyUI folder" in result.stderr, result.stderr


def test_known_nodes_match_the_running_comfyui(comfy):
    """known_nodes.json is what the running ComfyUI says about those node types (rewrite it with
    `python -m deadiff_runner.known_nodes` when this fails after a node changed)."""
    from deadiff_runner.workflow_api import comfy_node_info, widget_layout

    live = comfy_node_info(comfy.nodes)
    snapshot = json.loads(known_nodes.SNAPSHOT.read_text())["nodes"]
    assert set(snapshot) == {t for t in known_nodes.snapshot_types() if live(t) is not None}
    for class_type, kept in snapshot.items():
        info = live(class_type)
        reduced = known_nodes.reduce(info)
        assert widget_layout(kept) == widget_layout(info), class_type
        assert (reduced["input"], reduced["input_order"]) == (kept["input"], kept["input_order"]), class_type
        assert reduced["display_names"][0] in kept["display_names"], (class_type, reduced["display_names"])
        if kept["output"]:  # (0.33 lists Save/Preview Image's pass-through output; the analysis ignores it)
            assert (reduced["output"], reduced["output_name"]) == (kept["output"], kept["output_name"]), class_type


# ------------------------------------------------------------------------------------- jobs, without ComfyUI


def cli_args(**given):
    base = dict(
        prompt=[],
        seed=[],
        style=[],
        content=[],
        control=[],
        negative=None,
        steps=None,
        cfg=None,
        width=None,
        height=None,
        overrides=[],
    )
    base.update(given)
    return SimpleNamespace(**base)


def test_command_line_batch_is_every_combination():
    jobs = jobs_mod.from_command_line(cli_args(prompt=["a", "b"], style=["s1", "s2", "s3"], seed=[1, 2]), {"style": 1})
    assert len(jobs) == 12
    assert [j.index for j in jobs] == list(range(1, 13))
    assert {(j.prompt, tuple(j.style), j.seed) for j in jobs} == {
        (p, (s,), n) for p in "ab" for s in ("s1", "s2", "s3") for n in (1, 2)
    }
    two_slots = jobs_mod.from_command_line(cli_args(style=["a", "b", "c", "d"]), {"style": 2})
    assert [j.style for j in two_slots] == [["a", "b"], ["c", "d"]]


def test_jobs_files(tmp_path):
    (tmp_path / "lines.txt").write_text("# prompts\na lighthouse\n\na harbour\n")
    lines = jobs_mod.from_file(tmp_path / "lines.txt", cli_args(style=["ref.png"], steps=20), {"style": 1})
    assert [(j.prompt, j.style, j.steps) for j in lines] == [
        ("a lighthouse", ["ref.png"], 20),
        ("a harbour", ["ref.png"], 20),
    ]
    (tmp_path / "grid.csv").write_text(
        "prompt,style,seed,set\na cat,x.png,1,5.end_at=0.5|5.style_weight=0.8\na dog,y.png,2,\n"
    )
    rows = jobs_mod.from_file(tmp_path / "grid.csv", cli_args(), {"style": 1})
    assert [(j.prompt, j.style, j.seed) for j in rows] == [
        ("a cat", [str(tmp_path / "x.png")], 1),
        ("a dog", [str(tmp_path / "y.png")], 2),
    ]
    assert rows[0].overrides == ["5.end_at=0.5", "5.style_weight=0.8"] and rows[1].overrides == []
    (tmp_path / "grid.json").write_text(json.dumps({"prompt": ["p", "q"], "style": ["s.png", "t.png"], "seed": [7]}))
    grid = jobs_mod.from_file(tmp_path / "grid.json", cli_args(), {"style": 1})
    assert len(grid) == 4 and {j.seed for j in grid} == {7}
    (tmp_path / "bad.json").write_text(json.dumps([{"prompt": "x", "sytle": "a.png"}]))
    with pytest.raises(jobs_mod.JobsError, match="unknown field"):
        jobs_mod.from_file(tmp_path / "bad.json", cli_args(), {"style": 1})
    with pytest.raises(jobs_mod.JobsError, match="not a valid int"):
        (tmp_path / "badseed.csv").write_text("prompt,seed\na,abc\n")
        jobs_mod.from_file(tmp_path / "badseed.csv", cli_args(), {"style": 1})


def test_batch_outputs_are_distinct(tmp_path):
    jobs = jobs_mod.from_command_line(cli_args(prompt=["a", "b"], seed=[5]), {})
    jobs_mod.assign_outputs(jobs, None, "deadiff_style_transfer", tmp_path)
    assert [j.output.name for j in jobs] == ["deadiff_style_transfer_001_5.png", "deadiff_style_transfer_002_5.png"]
    jobs_mod.assign_outputs(
        jobs := jobs_mod.from_command_line(cli_args(prompt=["a", "b"]), {}), "out.png", "w", tmp_path
    )
    assert [j.output.name for j in jobs] == ["out-001.png", "out-002.png"]
    jobs = jobs_mod.from_command_line(cli_args(prompt=["a cat", "b"], seed=[1]), {})
    jobs_mod.assign_outputs(jobs, str(tmp_path / "{index}_{prompt}_{seed}.png"), "w", tmp_path)
    assert [j.output.name for j in jobs] == ["1_a_cat_1.png", "2_b_1.png"]
    with pytest.raises(jobs_mod.JobsError, match="would both write"):
        jobs_mod.assign_outputs(
            jobs_mod.from_command_line(cli_args(prompt=["a", "b"]), {}),
            str(tmp_path / "same_{seed}.png"),
            "w",
            tmp_path,
        )


def test_models_folder_order(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    pinned = cache / "ComfyUI-0.3.75"
    mine = tmp_path / "MyComfyUI"
    monkeypatch.setenv("DEADIFF_CACHE", str(cache))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(models_home.ENV_VAR, raising=False)
    resolve = models_home.resolve
    assert resolve(str(tmp_path / "m"), str(tmp_path / "b"), mine, mine).reason == "given with --models-dir"
    assert resolve(None, str(tmp_path / "b"), mine, mine).path == tmp_path / "b" / "models"
    assert resolve(None, None, mine, mine).path == mine / "models"  # the ComfyUI holding the pack
    assert resolve(None, None, mine, None).path == mine / "models"  # a ComfyUI the user named
    home = resolve(None, None, pinned, None)  # the development copy: never
    assert home.path == tmp_path / "xdg" / "comfyui-deadiff" / "models" and home.extra
    assert "per-user data folder" in home.reason
    monkeypatch.setenv(models_home.ENV_VAR, str(tmp_path / "shared"))
    assert resolve(None, None, pinned, None).path == tmp_path / "shared"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.delenv(models_home.ENV_VAR)
    assert models_home.user_data_dir() == Path.home() / ".local" / "share" / "comfyui-deadiff" / "models"
