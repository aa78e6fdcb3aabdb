"""The `deadiff` model folder, registered the ComfyUI way so extra_model_paths.yaml can add to it."""

from __future__ import annotations

import os

import folder_paths

FOLDER = "deadiff"
EXTENSIONS = {".ckpt", ".safetensors", ".sft"}


def register_model_folder() -> None:
    """models/deadiff first, then whatever extra_model_paths.yaml already listed under `deadiff`.

    ComfyUI reads extra_model_paths.yaml before custom nodes load; a folder it created that way has
    no extension filter, so we keep its paths and set ours.
    """
    default = os.path.join(folder_paths.models_dir, FOLDER)
    paths = list(folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))[0])
    if default in paths:
        paths.remove(default)
    folder_paths.folder_names_and_paths[FOLDER] = ([default] + paths, set(EXTENSIONS))
