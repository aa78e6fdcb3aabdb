"""Every dimension of a DEADiff file, read from its tensor shapes.

Nothing is hard-coded, so the real ViT-L / BERT-base file and the tiny test files go through the
same code. Heads are width / 64 for both CLIP and BERT, as in the official models.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from .sites import SITES

HEAD_WIDTH = 64
VISION = "style_blip.visual_encoder."
BERT = "style_blip.Qformer.bert."


@dataclass(frozen=True)
class DEADiffConfig:
    vision_width: int
    vision_layers: int
    patch_size: int
    image_size: int
    num_positions: int
    qformer_hidden: int
    qformer_layers: int
    qformer_intermediate: int
    num_query_tokens: int
    vocab_size: int
    max_positions: int
    encoder_hidden: int
    proj_intermediate: int
    context_dim: int
    site_widths: dict[str, int] = field(default_factory=dict)  # site name -> width
    shared_vision: bool = True

    @property
    def vision_heads(self) -> int:
        return self.vision_width // HEAD_WIDTH

    @property
    def qformer_heads(self) -> int:
        return self.qformer_hidden // HEAD_WIDTH

    def as_metadata(self) -> dict[str, object]:
        return {k: v for k, v in vars(self).items()}


def count_layers(keys: Iterable[str], prefix: str) -> int:
    """Number of consecutive numbered blocks `prefix{i}.` present in `keys`."""
    found = {int(k[len(prefix) :].split(".", 1)[0]) for k in keys if k.startswith(prefix)}
    n = 0
    while n in found:
        n += 1
    return n


def infer_config(shapes: dict[str, tuple[int, ...]], shared_vision: bool) -> DEADiffConfig:
    """shapes: official key -> shape (tuple) of the tensors we keep."""
    conv = shapes[VISION + "conv1.weight"]  # (width, 3, patch, patch)
    positions = shapes[VISION + "positional_embedding"][0]  # 1 + grid * grid
    grid = math.isqrt(positions - 1)
    queries = shapes["style_blip.query_tokens"]  # (1, Q, hidden)
    words = shapes[BERT + "embeddings.word_embeddings.weight"]  # (vocab, hidden)
    return DEADiffConfig(
        vision_width=conv[0],
        vision_layers=count_layers(shapes, VISION + "transformer.resblocks."),
        patch_size=conv[2],
        image_size=grid * conv[2],
        num_positions=positions,
        qformer_hidden=words[1],
        qformer_layers=count_layers(shapes, BERT + "encoder.layer."),
        qformer_intermediate=shapes[BERT + "encoder.layer.0.intermediate.dense.weight"][0],
        num_query_tokens=queries[1],
        vocab_size=words[0],
        max_positions=shapes[BERT + "embeddings.position_embeddings.weight"][0],
        encoder_hidden=shapes[BERT + "encoder.layer.0.crossattention.self.key.weight"][1],
        proj_intermediate=shapes["style_proj_layer.dense1.weight"][0],
        context_dim=shapes[SITES[0].checkpoint_prefix + "i_to_k.weight"][1],
        site_widths={s.name: shapes[s.checkpoint_prefix + "i_to_k.weight"][0] for s in SITES},
        shared_vision=shared_vision,
    )
