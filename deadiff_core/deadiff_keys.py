"""The DEADiff part of a checkpoint: which keys DEADiff adds to SD1.5, the shape each must have, and the
dimensions its encoders can run with.

Kept apart from the file reading so that a converter, a test or a loader can ask "is this key DEADiff's?"
or "what shape must it have?" without opening a file; a mis-shaped tensor is then named exactly instead
of failing later inside a matmul.
"""

from __future__ import annotations

import torch

from .config import DEADiffConfig
from .sites import BRANCHES, SITES


def _branch_keep(key: str, branch: str) -> bool:
    blip = f"{branch}_blip."
    if key.startswith(f"{branch}_proj_layer."):
        return True
    if not key.startswith(blip):
        return False
    rest = key[len(blip) :]
    if rest.endswith("position_ids"):
        return False
    return rest == "query_tokens" or rest.startswith(("Qformer.bert.", "visual_encoder.", "ln_vision."))


SITE_KEYS = tuple(s.checkpoint_prefix + f"{p}.weight" for s in SITES for p in ("i_to_k", "i_to_v"))


def is_kept(key: str) -> bool:
    return key in SITE_KEYS or any(_branch_keep(key, b) for b in BRANCHES)


def is_vision(key: str) -> bool:
    return ".visual_encoder." in key or ".ln_vision." in key


def expected_shapes(c: DEADiffConfig) -> dict:
    """Every kept key and its shape, from the inferred dims and how the parts connect (positions =
    grid^2 + 1, cross-attention input = vision width, site input = Q-Former width): a mis-shaped tensor
    is named exactly instead of failing later inside a matmul."""
    shapes = {}
    for branch in BRANCHES:
        b = f"{branch}_blip."
        if branch == "style" or not c.shared_vision:
            v = b + "visual_encoder."
            w = c.vision_width
            grid = c.image_size // c.patch_size
            shapes.update(
                {
                    v + "conv1.weight": (w, 3, c.patch_size, c.patch_size),
                    v + "class_embedding": (w,),
                    v + "positional_embedding": (grid * grid + 1, w),
                    v + "ln_pre.weight": (w,),
                    v + "ln_pre.bias": (w,),
                    b + "ln_vision.weight": (w,),
                    b + "ln_vision.bias": (w,),
                }
            )
            for i in range(c.vision_layers):
                r = f"{v}transformer.resblocks.{i}."
                shapes.update(
                    {
                        r + "attn.in_proj_weight": (3 * w, w),
                        r + "attn.in_proj_bias": (3 * w,),
                        r + "attn.out_proj.weight": (w, w),
                        r + "attn.out_proj.bias": (w,),
                        r + "mlp.c_fc.weight": (4 * w, w),
                        r + "mlp.c_fc.bias": (4 * w,),
                        r + "mlp.c_proj.weight": (w, 4 * w),
                        r + "mlp.c_proj.bias": (w,),
                    }
                )
                for n in ("ln_1", "ln_2"):
                    shapes.update({r + n + ".weight": (w,), r + n + ".bias": (w,)})
        h, f, e = c.qformer_hidden, c.qformer_intermediate, c.vision_width  # cross-attention reads the vision tokens
        q = b + "Qformer.bert."
        shapes.update(
            {
                b + "query_tokens": (1, c.num_query_tokens, h),
                q + "embeddings.word_embeddings.weight": (c.vocab_size, h),
                q + "embeddings.position_embeddings.weight": (c.max_positions, h),
                q + "embeddings.LayerNorm.weight": (h,),
                q + "embeddings.LayerNorm.bias": (h,),
            }
        )
        for i in range(c.qformer_layers):
            layer = f"{q}encoder.layer.{i}."
            for att, kv in (("attention", h), ("crossattention", e)):
                a = layer + att + "."
                shapes.update(
                    {
                        a + "self.query.weight": (h, h),
                        a + "self.query.bias": (h,),
                        a + "self.key.weight": (h, kv),
                        a + "self.key.bias": (h,),
                        a + "self.value.weight": (h, kv),
                        a + "self.value.bias": (h,),
                        a + "output.dense.weight": (h, h),
                        a + "output.dense.bias": (h,),
                        a + "output.LayerNorm.weight": (h,),
                        a + "output.LayerNorm.bias": (h,),
                    }
                )
            for suffix in ("", "_query"):
                shapes.update(
                    {
                        layer + f"intermediate{suffix}.dense.weight": (f, h),
                        layer + f"intermediate{suffix}.dense.bias": (f,),
                        layer + f"output{suffix}.dense.weight": (h, f),
                        layer + f"output{suffix}.dense.bias": (h,),
                        layer + f"output{suffix}.LayerNorm.weight": (h,),
                        layer + f"output{suffix}.LayerNorm.bias": (h,),
                    }
                )
        p = f"{branch}_proj_layer."
        shapes.update(
            {
                p + "dense1.weight": (c.proj_intermediate, h),
                p + "dense1.bias": (c.proj_intermediate,),
                p + "dense2.weight": (h, c.proj_intermediate),
                p + "dense2.bias": (h,),
                p + "LayerNorm.weight": (h,),
                p + "LayerNorm.bias": (h,),
            }
        )
    for s in SITES:
        for p in ("i_to_k", "i_to_v"):
            shapes[s.checkpoint_prefix + f"{p}.weight"] = (c.site_widths[s.name], c.qformer_hidden)  # reads the tokens
    return shapes


def _impossible_dimensions(c: DEADiffConfig) -> str | None:
    """Dimensions that are consistent across the file's tensors but that the DEADiff encoders cannot run
    with (they would fail later with a bare ZeroDivisionError or IndexError)."""
    from .config import BERT, HEAD_WIDTH, VISION
    from .qformer import TEXT_IDS

    word_ids = max(i for ids in TEXT_IDS.values() for i in ids)
    text_length = max(len(ids) for ids in TEXT_IDS.values())
    if c.vision_width % HEAD_WIDTH:
        return (
            f"the vision width {c.vision_width} (from {VISION}conv1.weight) is not a multiple of {HEAD_WIDTH}, "
            "the head width of DEADiff's CLIP vision tower (1024 in deadiff_v1)"
        )
    if c.qformer_hidden % HEAD_WIDTH:
        return (
            f"the Q-Former width {c.qformer_hidden} (from {BERT}embeddings.word_embeddings.weight) is not a "
            f"multiple of {HEAD_WIDTH}, the head width of DEADiff's BERT Q-Former (768 in deadiff_v1)"
        )
    if c.vocab_size <= word_ids:
        return (
            f"{BERT}embeddings.word_embeddings.weight has {c.vocab_size} rows, but DEADiff asks its Q-Formers "
            f"'style' and 'content' with token ids up to {word_ids} (the bert-base-uncased vocabulary, 30523 "
            "rows in deadiff_v1)"
        )
    if c.max_positions < text_length:
        return (
            f"{BERT}embeddings.position_embeddings.weight has {c.max_positions} rows; DEADiff's text needs "
            f"{text_length} (512 in deadiff_v1)"
        )
    if c.num_query_tokens < 1 or c.image_size < 1:
        return (
            f"the file describes {c.num_query_tokens} query tokens and {c.image_size}-pixel images "
            "(16 and 224 in deadiff_v1)"
        )
    return None


def _finite(t: torch.Tensor) -> bool:
    """No NaN or Inf: min and max propagate both, in one pass and without a full-size mask."""
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t.detach())
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def first_non_finite(named_tensors) -> str | None:
    """Name of the first tensor holding NaN or Inf, or None."""
    return next((name for name, t in named_tensors if t.is_floating_point() and not _finite(t)), None)
