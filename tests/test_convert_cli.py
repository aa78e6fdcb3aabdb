"""deadiff-convert as the README says to run it: from the pack's folder inside a ComfyUI, and from
ComfyUI's root in a Python that has ComfyUI's requirements but not this pack installed."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import deadiff_fakes
from conftest import REPO


@pytest.fixture
def comfy_tree(tmp_path):
    """ComfyUI/custom_nodes/ComfyUI-DEADiff (a copy of what the command needs: a real folder, as a clone is;
    `..` from a symlinked folder would lead elsewhere) and ComfyUI/models/deadiff/deadiff_v1.ckpt."""
    root = tmp_path / "ComfyUI"
    pack = root / "custom_nodes" / "ComfyUI-DEADiff"
    for part in ("deadiff_core", "scripts"):
        shutil.copytree(REPO / part, pack / part, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "models" / "deadiff").mkdir(parents=True)
    deadiff_fakes.place(root / "models" / "deadiff", "deadiff_v1.ckpt", seed=3)
    return root


def plain_python(*args, cwd: Path):
    """This interpreter without site processing (so no editable install of the pack is importable), with
    the environment's packages on the path: what a plain ComfyUI environment looks like to the pack."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["PYTHONPATH"] = sysconfig.get_paths()["purelib"]
    return subprocess.run(
        [sys.executable, "-S", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=lambda: os.umask(0o022),
    )


def readable_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_from_the_packs_folder_writes_next_to_the_input(comfy_tree):
    pack = comfy_tree / "custom_nodes" / "ComfyUI-DEADiff"
    result = plain_python("-m", "deadiff_core.convert", "../../models/deadiff/deadiff_v1.ckpt", cwd=pack)
    assert result.returncode == 0, result.stderr[-3000:]
    compact = comfy_tree / "models" / "deadiff" / "deadiff_v1_compact.safetensors"
    assert compact.is_file()
    assert readable_mode(compact) == 0o644
    assert not list((comfy_tree / "models" / "deadiff").glob("*.partial"))


def test_from_comfyuis_root_by_path(comfy_tree):
    check = plain_python("-c", "import deadiff_core", cwd=comfy_tree)
    assert check.returncode != 0 and "No module named 'deadiff_core'" in check.stderr  # a plain environment
    result = plain_python(
        "custom_nodes/ComfyUI-DEADiff/scripts/convert.py", "models/deadiff/deadiff_v1.ckpt", cwd=comfy_tree
    )
    assert result.returncode == 0, result.stderr[-3000:]
    compact = comfy_tree / "models" / "deadiff" / "deadiff_v1_compact.safetensors"
    assert compact.is_file() and readable_mode(compact) == 0o644
    again = plain_python(
        "custom_nodes/ComfyUI-DEADiff/scripts/convert.py", "models/deadiff/deadiff_v1.ckpt", cwd=comfy_tree
    )
    assert again.returncode == 2 and "exists; pass --force" in again.stderr


def test_a_wrong_relative_path_from_the_packs_folder_is_explained(comfy_tree):
    pack = comfy_tree / "custom_nodes" / "ComfyUI-DEADiff"
    result = plain_python("-m", "deadiff_core.convert", "models/deadiff/deadiff_v1.ckpt", cwd=pack)
    assert result.returncode == 2
    assert "no such file" in result.stderr and "../../models/deadiff/" in result.stderr
    assert "Traceback" not in result.stderr
