"""The four DEADiff nodes. Their ids and input names are a public contract (shared workflows)."""
from .model_folder import register_model_folder

register_model_folder()

from .apply import DEADiffApply  # noqa: E402
from .encoders import DEADiffContentEncoder, DEADiffStyleEncoder  # noqa: E402
from .loader import DEADiffModelLoader  # noqa: E402

NODE_CLASS_MAPPINGS = {
    "DEADiffModelLoader": DEADiffModelLoader,
    "DEADiffStyleEncoder": DEADiffStyleEncoder,
    "DEADiffContentEncoder": DEADiffContentEncoder,
    "DEADiffApply": DEADiffApply,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "DEADiffModelLoader": "Load DEADiff Model",
    "DEADiffStyleEncoder": "DEADiff Style Encoder",
    "DEADiffContentEncoder": "DEADiff Content Encoder",
    "DEADiffApply": "Apply Disentangled Conditioning",
}
