"""The attention of one DEADiff site (docs/design.md §6).

Image tokens do not get an attention of their own: their keys and values are appended to the text
keys and values and ONE softmax runs over both. Zero tokens are real tokens (their keys are zero, so
they still take softmax mass), which is why the unconditional pass and an unused branch get them.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from einops import rearrange

# (q, k, v, heads, mask=None, **kwargs) -> out, tokens laid out as (batch, tokens, heads * head_dim):
# the signature of ComfyUI's optimized attention functions, so the nodes can pass those in.
AttentionFn = Callable[..., torch.Tensor]


def sdpa_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: Optional[torch.Tensor] = None, **_
) -> torch.Tensor:
    """Multi-head attention in the (batch, tokens, heads*dim) layout; mask is additive."""
    q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q, k, v))
    if mask is not None and mask.ndim == 3:
        mask = mask.unsqueeze(1)  # one bias for every head
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return rearrange(out, "b h n d -> b n (h d)")


def image_keys_values(
    tokens: torch.Tensor,
    i_to_k: Callable[[torch.Tensor], torch.Tensor],
    i_to_v: Callable[[torch.Tensor], torch.Tensor],
    weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values of the image tokens at one site: w * i_to_k(E), w * i_to_v(E).

    `i_to_k` / `i_to_v` are the site's projection layers (bias-free Linear), called on the tokens so
    that a host's layers bring their weights to the tokens' device and dtype. Computed once per
    (tokens, weight, device, dtype) and reused at every sampling step. The projections are bias-free,
    so scaling by w equals scaling the tokens.
    """
    return i_to_k(tokens) * weight, i_to_v(tokens) * weight


def image_key_bias(query_mask: torch.Tensor, text_tokens: int) -> torch.Tensor:
    """Additive bias that lets image tokens act only where `query_mask` is on.

    query_mask: (batch, queries, image_tokens) in 0..1 (1: attend fully, 0: not at all). The bias is
    log(mask) on the image keys and 0 on the text keys, so a query outside the mask attends to the
    text alone and a soft mask scales the image tokens' unnormalised attention weights.
    """
    bias = torch.log(query_mask.clamp(min=0.0, max=1.0))
    return F.pad(bias, (text_tokens, 0), value=0.0)


def disentangled_attention(
    q: torch.Tensor,
    k_text: torch.Tensor,
    v_text: torch.Tensor,
    k_image: torch.Tensor,
    v_image: torch.Tensor,
    heads: int,
    mask: Optional[torch.Tensor] = None,
    attention: AttentionFn = sdpa_attention,
    **attention_kwargs,
) -> torch.Tensor:
    """One softmax over [text keys; image keys] (text first, image second), then the weighted values.

    q: (B, Nq, C); k_text, v_text: (B, Nt, C); k_image, v_image: (B or 1, Ni, C) already projected
    (see `image_keys_values`); mask: optional additive bias broadcastable to (B, Nq, Nt + Ni).
    """
    batch = q.shape[0]
    k = torch.cat([k_text, k_image.expand(batch, -1, -1).to(k_text.dtype)], dim=1)
    v = torch.cat([v_text, v_image.expand(batch, -1, -1).to(v_text.dtype)], dim=1)
    if mask is None:
        return attention(q, k, v, heads, **attention_kwargs)
    return attention(q, k, v, heads, mask=mask.to(q.dtype), **attention_kwargs)
