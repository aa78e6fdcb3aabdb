"""The DEADiff nodes on ComfyUI's V3 schema. Their ids, inputs and socket types are a public contract
(shared workflows); ComfyUI finds them through `comfy_entrypoint` in the pack's __init__.py."""

from .model_folder import register_model_folder

register_model_folder()

from .apply import DEADiffApply  # noqa: E402
from .download import DEADiffDownloadModel  # noqa: E402
from .encoders import DEADiffContentEncoder, DEADiffStyleEncoder  # noqa: E402
from .loader import DEADiffModelLoader  # noqa: E402
from .mixing import DEADiffMixContents, DEADiffMixStyles  # noqa: E402
from .layer_routing import DEADiffRouting  # noqa: E402
from .saved_tokens import DEADiffLoadContent, DEADiffLoadStyle, DEADiffSaveTokens  # noqa: E402
from .sockets import ComfyExtension, io  # noqa: E402

NODES = [
    DEADiffModelLoader,
    DEADiffDownloadModel,
    DEADiffStyleEncoder,
    DEADiffContentEncoder,
    DEADiffApply,
    DEADiffMixStyles,
    DEADiffMixContents,
    DEADiffSaveTokens,
    DEADiffLoadStyle,
    DEADiffLoadContent,
    DEADiffRouting,
]


class DEADiffExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> DEADiffExtension:
    return DEADiffExtension()
