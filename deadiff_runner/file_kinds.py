"""What a weight file is, from its tensor names alone, so a file in the wrong folder is named for what it is.

Only the file's index is read (the safetensors header, or the pickle index of a torch zip archive,
through deadiff_core's reader, which never runs code from a file); no tensor data is loaded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

# kind -> (what it is, the ComfyUI model folder it belongs in)
KINDS = {
    "deadiff": ("a DEADiff file", "deadiff"),
    "sd": ("a Stable Diffusion checkpoint", "checkpoints"),
    "ipadapter": ("an IP-Adapter model", "ipadapter"),
    "controlnet": ("a ControlNet", "controlnet"),
    "lora": ("a LoRA", "loras"),
}
WEIGHT_SUFFIXES = (".ckpt", ".safetensors", ".sft", ".pt", ".pth", ".bin")


def kind_of(path) -> Optional[str]:
    """One of KINDS, or None when the file cannot be read or is none of them."""
    from deadiff_core.checkpoint import open_tensors
    from deadiff_core.errors import DEADiffCheckpointError

    try:
        mapping, _metadata = open_tensors(str(path))
        keys = list(mapping.keys())
    except (DEADiffCheckpointError, OSError, ValueError, RuntimeError):
        return None
    top = {k.split(".", 1)[0] for k in keys}
    if any(k.startswith(("style_blip.", "content_blip.")) for k in keys):
        return "deadiff"
    if {"image_proj", "ip_adapter"} & top:
        return "ipadapter"
    if any(k.startswith("model.diffusion_model.") for k in keys):
        return "sd"
    if any(k.startswith(("control_model.", "input_hint_block.", "controlnet_cond_embedding.")) for k in keys):
        return "controlnet"
    if any("lora_" in k or ".lora." in k for k in keys):
        return "lora"
    return None


def misplaced(folder: Path, expected_kind: str) -> list[tuple[Path, str]]:
    """(file, kind) for each weight file directly in `folder` that is of another kind than expected."""
    found = []
    if not folder.is_dir():
        return found
    for entry in sorted(folder.iterdir()):
        if not entry.is_file() or not entry.name.lower().endswith(WEIGHT_SUFFIXES):
            continue
        kind = kind_of(entry)
        if kind is not None and kind != expected_kind:
            found.append((entry, kind))
    return found


def find_by_name(models_root: Path, filename: str, skip: Path) -> list[Path]:
    """Files called `filename` in the other folders of a models folder (one level down)."""
    hits = []
    if not models_root.is_dir():
        return hits
    for folder in sorted(models_root.iterdir()):
        candidate = folder / filename
        if folder.is_dir() and os.path.realpath(folder) != os.path.realpath(skip) and candidate.is_file():
            hits.append(candidate)
    return hits


def describe(path: Path, kind: str) -> str:
    what, folder = KINDS[kind]
    return f"{path} is {what}: it belongs in models/{folder}"
