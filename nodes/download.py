"""(Down)load DEADiff Model: fetch deadiff_v1.ckpt from Hugging Face into models/deadiff when it is not
there yet, with ComfyUI's progress bar, then load it, like the ecosystem's "(Down)load ... Model" nodes.

It downloads only when a prompt that holds this node runs (never at import or when ComfyUI starts),
and only a file that is missing; a second run just loads the file. The front end refuses to
download .ckpt files from a workflow's model list, so this node is the in-ComfyUI way to get the
official file. The transfer is deadiff_core.download (huggingface_hub: HF_TOKEN, HF_ENDPOINT and
HF_HUB_OFFLINE apply; the hub's checksum and the free disk space are checked).
"""

from __future__ import annotations

import os

import folder_paths
from comfy_api.v0_0_2 import io

from ..deadiff_core import download as hub
from .managed import ManagedDEADiff
from ..deadiff_core.convert import COMPACT_SUFFIX, convert
from .model_folder import FOLDER


def _progress_class(node_id):
    """A tqdm that also drives ComfyUI's progress bar for this node (huggingface_hub takes a tqdm class)."""
    import comfy.utils
    from tqdm.auto import tqdm

    class ComfyProgress(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._comfy = comfy.utils.ProgressBar(max(1, int(self.total or 1)), node_id=node_id)

        def update(self, n=1):
            shown = super().update(n)
            self._comfy.update_absolute(int(self.n), max(1, int(self.total or self.n or 1)))
            return shown

    return ComfyProgress


class DEADiffDownloadModel(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="DEADiffDownloadModel",
            display_name="(Down)load DEADiff Model",
            category="DEADiff",
            description=(
                "Downloads the official DEADiff weights (deadiff_v1.ckpt, about 9 GB, Hugging Face qth/DEADiff; "
                "research licence: read it on the model page first) into models/deadiff if they are not there, "
                "then loads them. Nothing is downloaded until you queue a prompt with this node; later runs only "
                "load the file. Optionally converts it once to a compact .safetensors (about 1.4 GB) and loads that."
            ),
            inputs=[
                io.Combo.Input(
                    "file",
                    options=[hub.DEADIFF.filename],
                    default=hub.DEADIFF.filename,
                    tooltip="The file to fetch from Hugging Face qth/DEADiff into models/deadiff.",
                ),
                io.Boolean.Input(
                    "convert_to_compact",
                    default=False,
                    tooltip="After the download, write deadiff_v1_compact.safetensors next to it "
                    "(once) and load that: quicker to load at each start.",
                ),
            ],
            outputs=[
                io.Custom("DEADIFF").Output(
                    display_name="deadiff",
                    tooltip="The DEADiff encoders and per-layer projections, as Load DEADiff Model gives them.",
                )
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, file, convert_to_compact=False) -> io.NodeOutput:
        folder = folder_paths.get_folder_paths(FOLDER)[0]
        wanted = hub.KNOWN_FILES.get(file)
        if wanted is None or wanted.folder != FOLDER:
            raise ValueError(f"(Down)load DEADiff Model fetches {hub.DEADIFF.filename} only, not {file!r}")
        existing = folder_paths.get_full_path(FOLDER, file)
        if existing is None:
            try:
                existing = str(hub.download(wanted, folder, tqdm_class=_progress_class(cls.hidden.unique_id)))
            except hub.DownloadError as e:
                raise RuntimeError(f"(Down)load DEADiff Model: {e}") from None
        path = existing
        if convert_to_compact:
            compact = os.path.join(os.path.dirname(existing), os.path.splitext(file)[0] + COMPACT_SUFFIX)
            if not os.path.isfile(compact):
                convert(existing, compact)
            path = compact
        return io.NodeOutput(ManagedDEADiff.from_file(path))
