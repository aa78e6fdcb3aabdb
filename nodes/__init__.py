"""The DEADiff nodes. Their ids and input names are a public contract (shared workflows)."""
from .model_folder import register_model_folder

register_model_folder()

from .apply import DEADiffApply  # noqa: E402
from .encoders import DEADiffContentEncoder, DEADiffStyleEncoder  # noqa: E402
from .loader import DEADiffModelLoader  # noqa: E402
from .mixing import DEADiffMixContents, DEADiffMixStyles  # noqa: E402
from .routing import DEADiffRouting  # noqa: E402
from .saved_tokens import DEADiffLoadContent, DEADiffLoadStyle, DEADiffSaveTokens  # noqa: E402

NODE_CLASS_MAPPINGS = {
    "DEADiffModelLoader": DEADiffModelLoader,
    "DEADiffStyleEncoder": DEADiffStyleEncoder,
    "DEADiffContentEncoder": DEADiffContentEncoder,
    "DEADiffApply": DEADiffApply,
    "DEADiffMixStyles": DEADiffMixStyles,
    "DEADiffMixContents": DEADiffMixContents,
    "DEADiffSaveTokens": DEADiffSaveTokens,
    "DEADiffLoadStyle": DEADiffLoadStyle,
    "DEADiffLoadContent": DEADiffLoadContent,
    "DEADiffRouting": DEADiffRouting,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "DEADiffModelLoader": "Load DEADiff Model",
    "DEADiffStyleEncoder": "DEADiff Style Encoder",
    "DEADiffContentEncoder": "DEADiff Content Encoder",
    "DEADiffApply": "Apply Disentangled Conditioning",
    "DEADiffMixStyles": "DEADiff Mix Styles",
    "DEADiffMixContents": "DEADiff Mix Contents",
    "DEADiffSaveTokens": "DEADiff Save Tokens",
    "DEADiffLoadStyle": "DEADiff Load Style",
    "DEADiffLoadContent": "DEADiff Load Content",
    "DEADiffRouting": "DEADiff Layer Routing",
}
