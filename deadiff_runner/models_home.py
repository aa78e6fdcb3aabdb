"""Which models folder the runner uses, and why: a stable place that no cache clean or version bump moves.

In order, the first that applies:

1. `--models-dir DIR`;
2. `--base-directory DIR` (ComfyUI's own option): `DIR/models`;
3. the ComfyUI whose `custom_nodes` holds this pack: its `models`;
4. a ComfyUI named with `--comfyui-dir` / `COMFYUI_DIR`, unless it is the pinned development copy
   that scripts/run.sh fetches into its cache (that folder is named after a ComfyUI version and a
   cache clean deletes it, so weights must not live there);
5. `$DEADIFF_MODELS_DIR`;
6. the per-user data folder `$XDG_DATA_HOME/comfyui-deadiff/models` (default
   `~/.local/share/comfyui-deadiff/models`), which nothing but the user deletes.

The folder is a ComfyUI models folder: `deadiff/`, `checkpoints/`, `controlnet/`, ... inside it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ENV_VAR = "DEADIFF_MODELS_DIR"
APP_NAME = "comfyui-deadiff"


@dataclass(frozen=True)
class ModelsHome:
    path: Path
    reason: str
    # True when this folder is not ComfyUI's own models folder, so the session adds it in front
    extra: bool


def user_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base).expanduser() / APP_NAME / "models"


def development_cache() -> Path:
    """Where scripts/dev_env.sh keeps the pinned ComfyUI and the virtualenv."""
    return Path(os.environ.get("DEADIFF_CACHE") or Path.home() / ".cache" / APP_NAME).expanduser().resolve()


def is_development_copy(comfyui_dir: Path) -> bool:
    try:
        return development_cache() in Path(comfyui_dir).resolve().parents
    except OSError:
        return False


def resolve(
    models_dir: Optional[str],
    base_directory: Optional[str],
    comfyui_dir: Optional[Path],
    enclosing: Optional[Path],
    comfyui_source: str = "COMFYUI_DIR",
) -> ModelsHome:
    """The models folder, by the order in the module docstring. Nothing is created here."""
    if models_dir:
        return ModelsHome(Path(models_dir).expanduser().resolve(), "given with --models-dir", True)
    if base_directory:
        return ModelsHome(
            Path(base_directory).expanduser().resolve() / "models", "the models folder of --base-directory", False
        )
    if enclosing is not None and comfyui_dir is not None and Path(enclosing).resolve() == Path(comfyui_dir).resolve():
        return ModelsHome(Path(enclosing) / "models", "this pack is installed in that ComfyUI's custom_nodes", False)
    if comfyui_dir is not None and not is_development_copy(comfyui_dir):
        return ModelsHome(
            Path(comfyui_dir) / "models", f"the models folder of the ComfyUI named by {comfyui_source}", False
        )
    env = os.environ.get(ENV_VAR)
    if env:
        return ModelsHome(Path(env).expanduser().resolve(), f"set by ${ENV_VAR}", True)
    reason = (
        "the per-user data folder (this pack is not inside a ComfyUI, and the ComfyUI in the development "
        f"cache {development_cache()} is not a place for weights; set ${ENV_VAR} or --models-dir to use "
        "another folder)"
    )
    return ModelsHome(user_data_dir(), reason, True)
