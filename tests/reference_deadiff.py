"""docs/design.md §2-§4 and §6 written out in plain torch from the raw official keys: no transformers, no pack code.

The encoders and the attention patch are compared against this, so it is kept as literal as
possible: one function per step of the design document, loops instead of cleverness.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
TEXT = {"style": [101, 2806, 102], "content": [101, 4180, 102]}


def pixels(images, size):
    """RGB (gray repeated, alpha dropped), squash to size x size, bicubic antialiased, 0..1, CLIP-normalized."""
    x = images.float()
    if x.shape[-1] == 1:
        x = torch.cat([x, x, x], dim=-1)
    x = x[..., :3].permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True).clamp(0, 1)
    return (x - MEAN) / STD


def attention(q, k, v, heads):
    b, n, c = q.shape
    d = c // heads
    q = q.view(b, n, heads, d).transpose(1, 2)
    k = k.view(b, k.shape[1], heads, d).transpose(1, 2)
    v = v.view(b, v.shape[1], heads, d).transpose(1, 2)
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1) @ v
    return a.transpose(1, 2).reshape(b, n, c)


def attention_with_bias(q, k, v, heads, bias):
    """attention() with an additive bias on the logits, (B, Nq, Nk), the same for every head."""
    b, n, c = q.shape
    d = c // heads
    q = q.view(b, n, heads, d).transpose(1, 2)
    k = k.view(b, k.shape[1], heads, d).transpose(1, 2)
    v = v.view(b, v.shape[1], heads, d).transpose(1, 2)
    logits = q @ k.transpose(-1, -2) / math.sqrt(d) + bias[:, None]
    return (torch.softmax(logits, dim=-1) @ v).transpose(1, 2).reshape(b, n, c)


def site_attention(q, k_text, v_text, image_tokens, i_to_k, i_to_v, heads):
    """docs/design.md §6: K = [k_text; w * E @ i_to_k^T ...], V likewise, one softmax over all keys.
    image_tokens: [(E of shape (1 or B, N, C), w), ...], one entry per set of image tokens."""
    keys, values = [k_text], [v_text]
    for tokens, weight in image_tokens:
        e = tokens.expand(q.shape[0], -1, -1).to(q.dtype)
        keys.append(weight * e @ i_to_k.T.to(q.dtype))
        values.append(weight * e @ i_to_v.T.to(q.dtype))
    return attention(q, torch.cat(keys, 1), torch.cat(values, 1), heads)


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def vision(sd, prefix, px):
    """LAVIS CLIP ViT: conv patches, class token, positions, ln_pre, pre-LN blocks, then ln_vision."""
    g = lambda name: sd[prefix + name].float()  # noqa: E731  (a one-line accessor, kept as literal as the rest)
    v = "visual_encoder."
    w = g(v + "conv1.weight")
    x = F.conv2d(px, w, stride=w.shape[-1]).flatten(2).transpose(1, 2)
    cls = g(v + "class_embedding").expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], 1) + g(v + "positional_embedding")
    width = x.shape[-1]
    x = F.layer_norm(x, (width,), g(v + "ln_pre.weight"), g(v + "ln_pre.bias"), 1e-5)
    i = 0
    while prefix + f"{v}transformer.resblocks.{i}.ln_1.weight" in sd:
        r = f"{v}transformer.resblocks.{i}."
        h = F.layer_norm(x, (width,), g(r + "ln_1.weight"), g(r + "ln_1.bias"), 1e-5)
        qkv = h @ g(r + "attn.in_proj_weight").T + g(r + "attn.in_proj_bias")
        q, k, vv = qkv.split(width, dim=-1)
        a = attention(q, k, vv, width // 64)
        x = x + a @ g(r + "attn.out_proj.weight").T + g(r + "attn.out_proj.bias")
        h = F.layer_norm(x, (width,), g(r + "ln_2.weight"), g(r + "ln_2.bias"), 1e-5)
        h = quick_gelu(h @ g(r + "mlp.c_fc.weight").T + g(r + "mlp.c_fc.bias"))
        x = x + h @ g(r + "mlp.c_proj.weight").T + g(r + "mlp.c_proj.bias")
        i += 1
    return F.layer_norm(x, (width,), g("ln_vision.weight"), g("ln_vision.bias"), 1e-5)


def linear(sd, name, x):
    return x @ sd[name + ".weight"].float().T + sd[name + ".bias"].float()


def post_ln(sd, name, x, residual):
    h = residual.shape[-1]
    return F.layer_norm(
        linear(sd, name + ".dense", x) + residual,
        (h,),
        sd[name + ".LayerNorm.weight"].float(),
        sd[name + ".LayerNorm.bias"].float(),
        1e-12,
    )


def qformer(sd, prefix, image, branch, weights=None):
    """BERT Q-Former: [queries; text] self-attention, query-only cross-attention, split feed-forward.
    With `weights` (B, image tokens), the cross-attention reads image token j with weight weights[b, j]."""
    b = prefix + "Qformer.bert."
    ids = torch.tensor(TEXT[branch])
    queries = sd[prefix + "query_tokens"].float().expand(image.shape[0], -1, -1)
    n_q, hidden = queries.shape[1], queries.shape[2]
    heads = hidden // 64
    text = (
        sd[b + "embeddings.word_embeddings.weight"].float()[ids]
        + sd[b + "embeddings.position_embeddings.weight"].float()[: len(ids)]
    )
    x = torch.cat([queries, text.expand(image.shape[0], -1, -1)], 1)
    x = F.layer_norm(
        x, (hidden,), sd[b + "embeddings.LayerNorm.weight"].float(), sd[b + "embeddings.LayerNorm.bias"].float(), 1e-12
    )
    i = 0
    while b + f"encoder.layer.{i}.attention.self.query.weight" in sd:
        L = f"{b}encoder.layer.{i}."
        s = L + "attention.self."
        a = attention(linear(sd, s + "query", x), linear(sd, s + "key", x), linear(sd, s + "value", x), heads)
        x = post_ln(sd, L + "attention.output", a, x)
        xq, xt = x[:, :n_q], x[:, n_q:]
        c = L + "crossattention.self."
        q, k, v = linear(sd, c + "query", xq), linear(sd, c + "key", image), linear(sd, c + "value", image)
        a = attention(q, k, v, heads) if weights is None else weighted_attention(q, k, v, heads, weights)
        xq = post_ln(sd, L + "crossattention.output", a, xq)
        xq = post_ln(sd, L + "output_query", F.gelu(linear(sd, L + "intermediate_query.dense", xq)), xq)
        xt = post_ln(sd, L + "output", F.gelu(linear(sd, L + "intermediate.dense", xt)), xt)
        x = torch.cat([xq, xt], 1)
        i += 1
    return x[:, :n_q]


def proj_layer(sd, prefix, x):
    h = x.shape[-1]
    y = F.layer_norm(x, (h,), sd[prefix + "LayerNorm.weight"].float(), sd[prefix + "LayerNorm.bias"].float(), 1e-12)
    return x + linear(sd, prefix + "dense2", quick_gelu(linear(sd, prefix + "dense1", y)))


@torch.no_grad()
def encode(sd, images, branch):
    """(B, H, W, C) images -> (B, 16, 768)-shaped tokens of `branch`, exactly as docs/design.md §2-§4 describe."""
    blip = f"{branch}_blip."
    patch = sd[blip + "visual_encoder.conv1.weight"].shape[-1]
    grid = math.isqrt(sd[blip + "visual_encoder.positional_embedding"].shape[0] - 1)
    image = vision(sd, blip, pixels(images, grid * patch))
    return proj_layer(sd, f"{branch}_proj_layer.", qformer(sd, blip, image, branch))


# ------------------------------------------------------------------ reference preparation options


def square(x, resize_mode, fill):
    """(B, C, H, W) -> the square the mode makes. center crop: the centred min(H, W) square; pad: the
    image centred in a max(H, W) square of `fill` (one value per channel). Leftover odd pixels go to
    the bottom / right. squash: x itself."""
    b, c, h, w = x.shape
    if resize_mode == "squash":
        return x
    if resize_mode == "center crop":
        s = min(h, w)
        top, left = (h - s) // 2, (w - s) // 2
        return x[:, :, top : top + s, left : left + s]
    s = max(h, w)
    out = torch.empty(b, c, s, s, dtype=x.dtype)
    for ch in range(c):
        out[:, ch] = fill[ch]
    top, left = (s - h) // 2, (s - w) // 2
    out[:, :, top : top + h, left : left + w] = x
    return out


def pixels_01(images, size, resize_mode="squash", pad_color=(0.5, 0.5, 0.5)):
    """The picture the tower reads, before CLIP's normalization: (B, 3, size, size) in 0..1."""
    x = images.float()
    if x.shape[-1] == 1:
        x = torch.cat([x, x, x], dim=-1)
    x = square(x[..., :3].permute(0, 3, 1, 2), resize_mode, pad_color)
    return F.interpolate(x, size=(size, size), mode="bicubic", antialias=True).clamp(0, 1)


def patch_weights(mask, size, patch, resize_mode):
    """(B, H, W) mask at the images' size, whose square side is a whole multiple of `size` -> (B, 1 + grid^2):
    1 for the CLS token, then each patch's mean mask value (its coverage) over the best patch's."""
    m = square(mask.float().clamp(0, 1).unsqueeze(1), resize_mode, [0.0])[:, 0]
    side = m.shape[-1]
    assert side % size == 0, "the plain reference only averages whole blocks"
    grid = size // patch
    block = patch * side // size
    coverage = torch.zeros(m.shape[0], grid * grid)
    for row in range(grid):
        for col in range(grid):
            cell = m[:, row * block : (row + 1) * block, col * block : (col + 1) * block]
            coverage[:, row * grid + col] = cell.mean(dim=(1, 2))
    coverage = coverage / coverage.max(dim=1, keepdim=True).values
    return torch.cat([torch.ones(m.shape[0], 1), coverage], dim=1)


def weighted_attention(q, k, v, heads, weights):
    """attention() where key j's share of the softmax is weights[b, j] * exp(logit_j), renormalized."""
    b, n, c = q.shape
    d = c // heads
    q = q.view(b, n, heads, d).transpose(1, 2)
    k = k.view(b, k.shape[1], heads, d).transpose(1, 2)
    v = v.view(b, v.shape[1], heads, d).transpose(1, 2)
    logits = q @ k.transpose(-1, -2) / math.sqrt(d)
    e = torch.exp(logits - logits.max(dim=-1, keepdim=True).values) * weights[:, None, None, :]
    return ((e / e.sum(dim=-1, keepdim=True)) @ v).transpose(1, 2).reshape(b, n, c)


def encode_with_options(sd, images, branch, resize_mode="squash", pad_color=(0.5, 0.5, 0.5), mask=None):
    """encode() with a resize mode and an optional (B, H, W) reference mask at the images' size."""
    blip = f"{branch}_blip."
    patch = sd[blip + "visual_encoder.conv1.weight"].shape[-1]
    grid = math.isqrt(sd[blip + "visual_encoder.positional_embedding"].shape[0] - 1)
    px = (pixels_01(images, grid * patch, resize_mode, pad_color) - MEAN) / STD
    image = vision(sd, blip, px)
    weights = None if mask is None else patch_weights(mask, grid * patch, patch, resize_mode)
    q = qformer(sd, blip, image, branch, weights)
    return proj_layer(sd, f"{branch}_proj_layer.", q)
