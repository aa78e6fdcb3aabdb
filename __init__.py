"""ComfyUI-DEADiff: DEADiff (CVPR 2024) reference-image stylization for SD1.5 models in ComfyUI.

ComfyUI imports this folder from custom_nodes and calls `comfy_entrypoint` (its V3 extension API);
everything ComfyUI-specific lives in `nodes/`, the model code in `deadiff_core/` (plain PyTorch +
transformers).
"""

try:
    import folder_paths  # noqa: F401  (always importable when ComfyUI loads us)
except ModuleNotFoundError:
    # Imported outside ComfyUI, e.g. by pytest collecting this folder as a package: the nodes need
    # ComfyUI's modules, so there is nothing to register.
    __all__ = []
else:
    from .nodes import comfy_entrypoint

    __all__ = ["comfy_entrypoint"]
