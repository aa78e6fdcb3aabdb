"""bench_sampling's comparison of ComfyUI's attention functions (and PyTorch's SDPA kernels on a GPU) on
the real attn2 shapes with 16 extra keys: time per step and agreement with plain float32 attention."""

from __future__ import annotations

import torch

from sampling_measure import replay_interleaved
from sampling_setup import log


class BackendPatch:
    """The floor's 16 zero image keys attended by one given ComfyUI attention function; `masked` adds a bias of
    DEADiff's kind (0 on text keys, log(mask) on image keys, the image keys masked off for half the queries)."""

    def __init__(self, attention, masked: bool, extra: int = 16):
        self.attention, self.masked, self.extra = attention, masked, extra
        self._cache = {}

    def extras(self, q, k):
        key = (tuple(q.shape), tuple(k.shape), k.device, k.dtype)
        if key not in self._cache:
            zeros = torch.zeros(k.shape[0], self.extra, k.shape[2], device=k.device, dtype=k.dtype)
            bias = None
            if self.masked:
                bias = torch.zeros(q.shape[0], q.shape[1], k.shape[1] + self.extra, device=q.device, dtype=q.dtype)
                bias[:, q.shape[1] // 2 :, k.shape[1] :] = float("-inf")
            self._cache[key] = (zeros, bias)
        return self._cache[key]

    def __call__(self, q, k, v, extra_options):
        zeros, bias = self.extras(q, k)
        k, v = torch.cat([k, zeros], dim=1), torch.cat([v, zeros], dim=1)
        kwargs = {"attn_precision": extra_options.get("attn_precision"), "transformer_options": extra_options}
        if bias is not None:
            kwargs["mask"] = bias
        return self.attention(q, k, v, extra_options["n_heads"], **kwargs)


def reference_attention(q, k, v, heads: int, bias=None):
    """Plain float32 multi-head attention (the math the backends must agree with)."""
    b, n, c = q.shape
    q, k, v = (t.float().view(b, -1, heads, c // heads).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) * (c // heads) ** -0.5
    if bias is not None:
        scores = scores + bias.float().unsqueeze(1)
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)


def attention_backends(inputs, rounds: int, sync=None) -> None:
    """ComfyUI's attention functions on this step's real attn2 shapes with 16 extra keys: time per step and
    agreement with plain float32 attention, by head width, without and with a DEADiff-style mask."""
    import comfy.ldm.modules.attention as attention

    functions = {"basic": attention.attention_basic}
    for name in ("pytorch", "sub_quad", "split", "xformers", "sage", "flash"):
        fn = attention.get_attention_function(name, None) if hasattr(attention, "get_attention_function") else None
        if fn is not None:
            functions[name] = fn
    chosen = {fn: name for name, fn in functions.items()}
    log(
        f"ComfyUI picks: optimized_attention = {chosen.get(attention.optimized_attention, '?')}, "
        f"optimized_attention_masked = {chosen.get(attention.optimized_attention_masked, '?')}"
    )
    log(
        "attention function | masked | ms per step (16 sites, fastest per site) | max abs error vs float32 at "
        "head width 40 / 80 / 160"
    )
    log("---|---|---|---")
    for masked in (False, True):
        patches = {name: BackendPatch(fn, masked) for name, fn in functions.items()}
        states = [(name, name, 1.0) for name in functions]
        errors = {}
        for name, patch in patches.items():
            errors[name] = {}
            for _block, (q, k, v, options) in inputs:
                width = q.shape[-1] // options["n_heads"]
                if width in errors[name]:
                    continue
                try:
                    out = patch(q, k, v, options)
                    zeros, bias = patch.extras(q, k)
                    ref = reference_attention(
                        q, torch.cat([k, zeros], 1), torch.cat([v, zeros], 1), options["n_heads"], bias
                    )
                    errors[name][width] = f"{(out.float() - ref).abs().max().item():.1e}"
                except Exception as e:  # a backend that cannot run these shapes
                    errors[name][width] = f"fails ({type(e).__name__})"
        runnable = [st for st in states if not any(e.startswith("fails") for e in errors[st[0]].values())]
        times = (
            replay_interleaved(
                runnable, {n: {b: p for b, _ in inputs} for n, p in patches.items()}, inputs, rounds, sync=sync
            )
            if runnable
            else {}
        )
        for name in functions:
            cell = f"{1000 * times[name]:.1f}" if name in times else "-"
            log(
                f"{name} | {'yes' if masked else 'no'} | {cell} | "
                + " / ".join(errors[name].get(w, "-") for w in (40, 80, 160))
            )


def sdpa_kernels(inputs) -> None:
    """Which of PyTorch's SDPA kernels take these attn2 shapes (head widths 40/80/160, 93 keys, fp16), without and
    with an additive float mask: what attention_pytorch gets on this GPU."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernels = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    if hasattr(SDPBackend, "CUDNN_ATTENTION"):
        kernels.insert(2, SDPBackend.CUDNN_ATTENTION)
    seen = {}
    for _block, (q, k, v, options) in inputs:
        heads = options["n_heads"]
        width = q.shape[-1] // heads
        if width in seen:
            continue
        seen[width] = True
        b = q.shape[0]
        k, v = (torch.cat([t, torch.zeros(b, 16, t.shape[2], device=t.device, dtype=t.dtype)], 1) for t in (k, v))
        qh, kh, vh = (t.view(b, -1, heads, width).transpose(1, 2) for t in (q, k, v))
        bias = torch.zeros(b, 1, q.shape[1], k.shape[1], device=q.device, dtype=q.dtype)
        bias[:, :, q.shape[1] // 2 :, -16:] = float("-inf")
        cells = []
        for kernel in kernels:
            for mask in (None, bias):
                try:
                    with sdpa_kernel([kernel]):
                        torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)
                    torch.cuda.synchronize()
                    cells.append(f"{kernel.name}{'+mask' if mask is not None else ''}: ok")
                except Exception as e:
                    cells.append(f"{kernel.name}{'+mask' if mask is not None else ''}: no ({type(e).__name__})")
        shape = f"head width {width}, {q.shape[1]} queries x {k.shape[1]} keys, {q.dtype}"
        log(f"SDPA kernels, {shape}: " + "; ".join(cells))
