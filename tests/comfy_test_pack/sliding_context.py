"""A stand-in for AnimateDiff-Evolved's sliding context windows, written from how that pack behaves
(test only).

AnimateDiff-Evolved samples a long latent batch (the frames) in windows of `context_length` latents:
for each window it runs the model on those latents only, with
transformer_options["ad_params"] = {"full_length": whole batch, "context_length": window size,
"sub_idxs": the window's indices into the whole batch} (sub_idxs None when it is not sliding), and
fuses the windows' predictions (here: a plain average where windows overlap). This stand-in does
that around ComfyUI's cond-batch computation, a wrapper ComfyUI offers for it.
"""

from __future__ import annotations

import comfy.patcher_extension
import torch

CATEGORY = "DEADiff/testing"
WRAPPER_KEY = "deadiff_test_sliding_context"


def windows(full_length: int, context_length: int, overlap: int) -> list[list[int]]:
    """Windows of context_length indices, each starting context_length - overlap after the last; the
    last one ends at the last latent."""
    if full_length <= context_length:
        return [list(range(full_length))]
    step = max(context_length - overlap, 1)
    starts = list(range(0, full_length - context_length, step)) + [full_length - context_length]
    return [list(range(s, s + context_length)) for s in dict.fromkeys(starts)]


class SlidingContext:
    def __init__(self, context_length: int, overlap: int):
        self.context_length, self.overlap = context_length, overlap

    def __call__(self, executor, model, conds, x_in, timestep, model_options):
        full = x_in.shape[0]
        if full <= self.context_length:
            return executor(model, conds, x_in, timestep, self._options(model_options, full, None))
        totals = [torch.zeros_like(x_in) for _ in conds]
        counts = torch.zeros(full, *([1] * (x_in.ndim - 1)), dtype=x_in.dtype, device=x_in.device)
        for idxs in windows(full, self.context_length, self.overlap):
            outs = executor(model, conds, x_in[idxs], timestep[idxs], self._options(model_options, full, idxs))
            for total, out in zip(totals, outs):
                total[idxs] += out
            counts[idxs] += 1
        return [total / counts for total in totals]

    def _options(self, model_options, full, idxs):
        options = dict(model_options)
        options["transformer_options"] = dict(options.get("transformer_options", {}))
        options["transformer_options"]["ad_params"] = {
            "full_length": full,
            "context_length": self.context_length,
            "sub_idxs": idxs,
        }
        return options


class DEADiffTest_SlidingContext:
    DESCRIPTION = (
        "Test only. Samples the latent batch in sliding windows the way AnimateDiff-Evolved does, "
        "exposing transformer_options['ad_params'] (full_length, context_length, sub_idxs)."
    )
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The MODEL, sampled in windows.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "Any MODEL."}),
                "context_length": ("INT", {"default": 8, "min": 1, "max": 256, "tooltip": "Latents per window."}),
                "overlap": (
                    "INT",
                    {"default": 2, "min": 0, "max": 255, "tooltip": "Latents shared by neighbouring windows."},
                ),
            }
        }

    def apply(self, model, context_length, overlap):
        model = model.clone()
        model.add_wrapper_with_key(
            comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, WRAPPER_KEY, SlidingContext(context_length, overlap)
        )
        return (model,)


NODE_CLASS_MAPPINGS = {"DEADiffTest_SlidingContext": DEADiffTest_SlidingContext}
NODE_DISPLAY_NAME_MAPPINGS = {"DEADiffTest_SlidingContext": "Sliding Context, AnimateDiff-style (DEADiff test)"}


# ---------------------------------------------------------------- ComfyUI's own context windows over a batch


def core_windows_handle_batches() -> bool:
    """Whether this ComfyUI's context-window handler can window the batch dimension. ComfyUI 0.3.75's
    finds the current step by comparing the whole per-latent timestep with the schedule, which fails
    for a batch of more than one latent; later versions compare its first value."""
    import comfy.context_windows as cw

    handler = cw.IndexListContextHandler(
        cw.get_matching_context_schedule("standard_static"), cw.get_matching_fuse_method("pyramid"), context_length=1
    )
    try:
        handler.set_step(torch.ones(2), {"transformer_options": {"sample_sigmas": torch.ones(3)}})
    except RuntimeError:
        return False
    return True


class DEADiffTest_BatchContextWindows:
    DESCRIPTION = (
        "Test only. What ComfyUI's Context Windows (Manual) node does (dim 0, standard_static, pyramid), "
        "for a ComfyUI whose handler cannot window a batch: ComfyUI's own IndexListContextHandler with "
        "only its step lookup done as later ComfyUI versions do it (the first timestep of the batch)."
    )
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The MODEL, sampled in ComfyUI's context windows over the batch.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "Any MODEL."}),
                "context_length": ("INT", {"default": 8, "min": 1, "max": 256, "tooltip": "Latents per window."}),
                "context_overlap": ("INT", {"default": 4, "min": 0, "max": 255, "tooltip": "Overlap of windows."}),
            }
        }

    def apply(self, model, context_length, context_overlap):
        import comfy.context_windows as cw

        class Handler(cw.IndexListContextHandler):
            def set_step(self, timestep, model_options):
                super().set_step(timestep[:1], model_options)

        model = model.clone()
        model.model_options["context_handler"] = Handler(
            cw.get_matching_context_schedule(cw.ContextSchedules.STATIC_STANDARD),
            cw.get_matching_fuse_method(cw.ContextFuseMethods.PYRAMID),
            context_length=context_length,
            context_overlap=context_overlap,
            dim=0,
        )
        cw.create_prepare_sampling_wrapper(model)
        return (model,)


NODE_CLASS_MAPPINGS["DEADiffTest_BatchContextWindows"] = DEADiffTest_BatchContextWindows
NODE_DISPLAY_NAME_MAPPINGS["DEADiffTest_BatchContextWindows"] = "Context Windows over a batch (DEADiff test)"
