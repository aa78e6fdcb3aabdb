"""Load DEADiff Model: the official deadiff_v1.ckpt or our compact .safetensors from models/deadiff."""

from __future__ import annotations

import logging

import comfy.utils
import folder_paths

from .managed import ManagedDEADiff
from .model_folder import FOLDER
from .sockets import CATEGORY, DEADIFF, check_choice, io, schema


class DEADiffModelLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="DEADiffModelLoader",
            display_name="Load DEADiff Model",
            category=CATEGORY,
            description=(
                "Loads a DEADiff file from models/deadiff: the official deadiff_v1.ckpt (read without running "
                "any code from the file; only the DEADiff parts are kept, not its SD1.5 copy) or a compact "
                ".safetensors made by deadiff-convert. Use your own SD1.5 checkpoint for the MODEL."
            ),
            search_aliases=["DEADiff", "load deadiff", "deadiff_v1", "style reference model"],
            inputs=[
                io.Combo.Input(
                    "deadiff_name",
                    options=folder_paths.get_filename_list(FOLDER),
                    tooltip=(
                        "A file in models/deadiff: deadiff_v1.ckpt from Hugging Face qth/DEADiff, "
                        "or a compact .safetensors converted from it."
                    ),
                ),
            ],
            outputs=[
                DEADIFF.Output(
                    display_name="deadiff",
                    tooltip=("The DEADiff encoders and per-layer projections, managed by ComfyUI's memory management."),
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, deadiff_name=None) -> bool | str:
        return check_choice(
            "deadiff_name",
            deadiff_name,
            folder_paths.get_filename_list(FOLDER),
            " (the files in models/deadiff). Download deadiff_v1.ckpt from Hugging Face "
            "qth/DEADiff into ComfyUI/models/deadiff, or pick a listed file.",
        )

    @classmethod
    def execute(cls, deadiff_name) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise(FOLDER, deadiff_name)
        deadiff = ManagedDEADiff.from_file(path, progress=PercentProgress())
        logging.info(deadiff.model.load_report.message())
        return io.NodeOutput(deadiff)


class PercentProgress:
    """ComfyUI's progress bar on the node, moved only when the whole percentage changes: the official
    .ckpt has about 1,400 records to read, and each update is a message to the front end."""

    def __init__(self):
        self.bar = comfy.utils.ProgressBar(100)
        self.percent = -1

    def __call__(self, done: int, total: int) -> None:
        percent = 100 * done // max(total, 1)
        if percent != self.percent:
            self.percent = percent
            self.bar.update_absolute(percent, 100)
