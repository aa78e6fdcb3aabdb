"""Load DEADiff Model: the official deadiff_v1.ckpt or our compact .safetensors from models/deadiff."""
from __future__ import annotations

import folder_paths

from .managed import ManagedDEADiff
from .model_folder import FOLDER

CATEGORY = "DEADiff"


class DEADiffModelLoader:
    DESCRIPTION = (
        "Loads a DEADiff file from models/deadiff: the official deadiff_v1.ckpt (read without running "
        "any code from the file; only the DEADiff parts are kept, not its SD1.5 copy) or a compact "
        ".safetensors made by deadiff-convert. Use your own SD1.5 checkpoint for the MODEL.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("DEADIFF",)
    RETURN_NAMES = ("deadiff",)
    OUTPUT_TOOLTIPS = ("The DEADiff encoders and per-layer projections, managed by ComfyUI's memory management.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "deadiff_name": (folder_paths.get_filename_list(FOLDER), {
                "tooltip": "A file in models/deadiff: deadiff_v1.ckpt from Hugging Face qth/DEADiff, "
                           "or a compact .safetensors converted from it."}),
        }}

    def load(self, deadiff_name):
        path = folder_paths.get_full_path_or_raise(FOLDER, deadiff_name)
        return (ManagedDEADiff.from_file(path),)
