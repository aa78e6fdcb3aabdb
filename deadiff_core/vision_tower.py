"""The CLIP ViT-L/14 image encoder as DEADiff uses it: 23 of its 24 blocks, then ln_vision.

transformers' CLIPVisionModel with num_hidden_layers = the checkpoint's block count reproduces the
LAVIS tower exactly (pre-LN blocks, QuickGELU, eps 1e-5); its `last_hidden_state` is taken before
post_layernorm, which DEADiff does not use. The LAVIS key layout is converted here.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from .config import DEADiffConfig


def _eager(config: CLIPVisionConfig) -> CLIPVisionConfig:
    config._attn_implementation = "eager"
    return config


class VisionTower(nn.Module):
    def __init__(self, c: DEADiffConfig) -> None:
        super().__init__()
        self.clip = CLIPVisionModel(
            _eager(
                CLIPVisionConfig(
                    hidden_size=c.vision_width,
                    intermediate_size=4 * c.vision_width,
                    num_hidden_layers=c.vision_layers,
                    num_attention_heads=c.vision_heads,
                    image_size=c.image_size,
                    patch_size=c.patch_size,
                    num_channels=3,
                    hidden_act="quick_gelu",
                    layer_norm_eps=1e-5,
                )
            )
        )
        self.ln_vision = nn.LayerNorm(c.vision_width, eps=1e-5)

    @property
    def transformer(self) -> nn.Module:
        """The module holding embeddings/encoder (transformers 4.x nests it in `vision_model`)."""
        return getattr(self.clip, "vision_model", self.clip)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        hidden = self.clip(pixel_values=pixels).last_hidden_state  # all 1 + grid^2 tokens, no post-LN
        return self.ln_vision(hidden)

    def load_official(self, tensors: dict[str, torch.Tensor], prefix: str, assign: bool = True) -> None:
        """Load `{prefix}visual_encoder.*` and `{prefix}ln_vision.*` (LAVIS names)."""
        v = prefix + "visual_encoder."
        hf = {
            "embeddings.class_embedding": tensors[v + "class_embedding"],
            "embeddings.patch_embedding.weight": tensors[v + "conv1.weight"],
            "embeddings.position_embedding.weight": tensors[v + "positional_embedding"],
            "pre_layrnorm.weight": tensors[v + "ln_pre.weight"],
            "pre_layrnorm.bias": tensors[v + "ln_pre.bias"],
        }
        for i in range(len(self.transformer.encoder.layers)):
            r, h = f"{v}transformer.resblocks.{i}.", f"encoder.layers.{i}."
            for part in ("weight", "bias"):
                q, k, val = tensors[r + f"attn.in_proj_{part}"].chunk(3, dim=0)
                hf.update(
                    {
                        h + f"self_attn.q_proj.{part}": q,
                        h + f"self_attn.k_proj.{part}": k,
                        h + f"self_attn.v_proj.{part}": val,
                        h + f"self_attn.out_proj.{part}": tensors[r + f"attn.out_proj.{part}"],
                        h + f"layer_norm1.{part}": tensors[r + f"ln_1.{part}"],
                        h + f"layer_norm2.{part}": tensors[r + f"ln_2.{part}"],
                        h + f"mlp.fc1.{part}": tensors[r + f"mlp.c_fc.{part}"],
                        h + f"mlp.fc2.{part}": tensors[r + f"mlp.c_proj.{part}"],
                    }
                )
        width = self.ln_vision.normalized_shape[0]
        like = tensors[v + "class_embedding"]
        # unused by DEADiff (last_hidden_state comes before it); identity so the module is complete
        hf["post_layernorm.weight"] = torch.ones(width, dtype=like.dtype)
        hf["post_layernorm.bias"] = torch.zeros(width, dtype=like.dtype)
        self.transformer.load_state_dict(hf, strict=True, assign=assign)
        self.ln_vision.load_state_dict(
            {"weight": tensors[prefix + "ln_vision.weight"], "bias": tensors[prefix + "ln_vision.bias"]},
            strict=True,
            assign=assign,
        )
