"""Benchmark of sampling with DEADiff (a script, not a test): what Apply Disentangled Conditioning costs per
sampling step over the same model unpatched, and over the floor (the same UNet attending to 16 extra
zero keys at the 16 sites, nothing else). Every figure is a ratio measured in one run.

    python bench/bench_sampling.py            # CPU: 32x32 and 64x64 latents (about 5 min on 2 cores)
    python bench/bench_sampling.py --quick    # 32x32 only, fewer rounds: a smoke run (about 2 min)
    python bench/bench_sampling.py --sizes 64 --rounds 3 --replay-rounds 20

On a CUDA machine it also runs fp16 512x512 (64x64 latent), 20 steps: it/s and peak VRAM unpatched vs
patched, and the DEADiff encoders at batch 1 vs batch 8 (fp16), through the nodes. --no-gpu skips that.

Model: the full-size SD1.5 UNet (ComfyUI's SD15 config, 860 M parameters) with random weights; a DEADiff
file with random weights, full-width site projections (context 768, sites 320/640/1280) and, on the CPU,
a tiny image encoder (the encoder does not take part in sampling; bench_core.py times the real one).

Two measurements per variant, interleaved in rounds (medians):
- step: the wall time of one model call (cond + uncond, batch 2) inside a real KSampler run (euler,
  cfg 7.5), from forward hooks on the UNet. Noisy on a shared machine: +-5% is common on 2 cores.
- attn2 replay: the 16 cross-attention calls of one step, replayed with the q/k/v ComfyUI handed to the
  sites in a real run, through each variant's own attn2 patch objects (unpatched: ComfyUI's
  optimized_attention, exactly what CrossAttention does). The patch changes nothing else in the UNet
  (to_q/to_k/to_v/to_out run either way), so (replay(variant) - replay(unpatched)) / step(unpatched) is
  the variant's overhead per step, measured on a part that is 30x cheaper and so far less noisy.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import importlib.util
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ.setdefault("TQDM_DISABLE", "1")

CACHE = Path(os.environ.get("DEADIFF_CACHE", Path.home() / ".cache" / "comfyui-deadiff"))
# Small encoder, full-width projections: the sampling path only sees the 32 i_to_* (768 -> site width).
SAMPLING_DIMS = dict(vision_width=64, vision_layers=1, patch_size=32, image_size=224, qformer_hidden=768,
                     qformer_layers=1, qformer_intermediate=256, num_query_tokens=16, model_channels=320,
                     proj_intermediate=256)
CFG = 7.5
WINDOWS = {"window 0.0-0.5": (0.0, 0.5), "window 0.3-0.8": (0.3, 0.8)}


def log(*parts) -> None:
    print(*parts, flush=True)


# ------------------------------------------------------------------------------------------- setup
def comfyui_dir() -> Path:
    if os.environ.get("COMFYUI_DIR"):
        return Path(os.environ["COMFYUI_DIR"]).resolve()
    spec = importlib.util.spec_from_file_location("fetch_comfyui", REPO / "scripts" / "fetch_comfyui.py")
    fetch_comfyui = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fetch_comfyui)
    return Path(fetch_comfyui.fetch(str(CACHE / f"ComfyUI-{fetch_comfyui.COMFYUI_VERSION}")))


def boot(cpu: bool):
    """ComfyUI in this process with the pack loaded by ComfyUI's own loader (deadiff_runner's Session)."""
    from deadiff_runner.comfy_session import Session

    return Session(comfyui_dir(), cpu=cpu, only_deadiff_nodes=True, log_level=logging.ERROR)


def tiny_models():
    """tests/comfy_test_pack/tiny_models.py: SD1.5 built from ComfyUI's classes, seeded init (reused, not copied)."""
    spec = importlib.util.spec_from_file_location("deadiff_bench_tiny_models",
                                                  REPO / "tests" / "comfy_test_pack" / "tiny_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def full_size_sd15(dtype, seed: int = 0):
    """The real SD1.5 UNet (ComfyUI's SD15 config: 768 context, 320 channels, 8 heads) with random weights,
    in `dtype`, as comfy.sd.load_state_dict_guess_config would build it for a real checkpoint."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    tm = tiny_models()
    model_config = comfy.supported_models.SD15(tm.sd15_unet_config(context_dim=768, model_channels=320))
    model_config.set_inference_dtype(dtype, mm.unet_manual_cast(dtype, mm.get_torch_device(),
                                                                 model_config.supported_inference_dtypes))
    model = model_config.get_model({}, "", device=mm.unet_offload_device())
    tm.init_parameters_(model, seed)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def fake_deadiff(folder: Path, dims: dict, name: str):
    """A DEADiff file with random weights in the official layout, loaded through the pack's ManagedDEADiff."""
    import deadiff_fakes

    path = folder / name
    deadiff_fakes.write_official_safetensors(path, deadiff_fakes.make_official_state_dict(seed=0, **dims))
    return path


class Pack:
    """The pack's nodes and modules as ComfyUI loaded them (never a second import)."""
    def __init__(self, session):
        self.nodes = session.nodes.NODE_CLASS_MAPPINGS
        self.apply_module = sys.modules[self.nodes["DEADiffApply"].__module__]
        self.root = self.apply_module.__name__.rsplit(".", 2)[0]  # the pack's package name
        self.managed = sys.modules[f"{self.root}.nodes.managed"]
        self.patch_module = sys.modules[f"{self.root}.nodes.attention_patch"]
        self.embedding = sys.modules[f"{self.root}.deadiff_core.embedding"]

    def load(self, path):
        return self.managed.ManagedDEADiff.from_file(str(path))

    def style(self, deadiff, image):
        """Style tokens from the encoder node; random tokens if random full-size weights overflow in fp16
        (sampling only needs tokens of the right shape)."""
        try:
            return self.nodes["DEADiffStyleEncoder"].execute(deadiff, image)[0]
        except FloatingPointError as e:
            log(f"(encoder: {e}; random style tokens used for sampling)")
            tokens = torch.randn(image.shape[0], deadiff.config.num_query_tokens, deadiff.config.context_dim)
            return self.embedding.DEADiffTokens("style", tokens, deadiff.fingerprint, source_name=deadiff.name)

    def apply(self, model, deadiff, start_at=0.0, end_at=1.0, **optional):
        return self.nodes["DEADiffApply"].execute(model, deadiff, 1.0, 1.0, start_at, end_at, **optional)[0]


# ------------------------------------------------------------------------------- the floor patch
class FloorPatch:
    """The unavoidable cost: append `extra` precomputed zero keys/values (one cat each) and call ComfyUI's
    optimized_attention. Records the first (q, k, v, extra_options) it sees per site and batch, for replay."""

    def __init__(self, extra: int, record: dict | None = None):
        self.extra = extra
        self.record = record
        self._zeros = {}

    def __deepcopy__(self, memo):
        return self

    def __call__(self, q, k, v, extra_options):
        from comfy.ldm.modules.attention import optimized_attention

        if self.record is not None:
            key = (tuple(extra_options["block"]), tuple(q.shape))
            self.record.setdefault(key, (q, k, v, dict(extra_options)))
        zkey = (k.shape[0], k.shape[2], k.device, k.dtype)
        zeros = self._zeros.get(zkey)
        if zeros is None:
            zeros = self._zeros[zkey] = torch.zeros(k.shape[0], self.extra, k.shape[2], device=k.device, dtype=k.dtype)
        return optimized_attention(q, torch.cat([k, zeros], dim=1), torch.cat([v, zeros], dim=1),
                                   extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"),
                                   transformer_options=extra_options)


def with_floor(model, extra: int, record: dict | None = None):
    from deadiff_core.routing import SITES

    patched = model.clone()
    patch = FloorPatch(extra, record)
    for site in SITES:
        patched.set_model_attn2_replace(patch, site.comfy_block[0], site.comfy_block[1], 0)
    return patched


def attn2_patches(model) -> dict:
    """(block name, number) -> the attn2 replace patch ComfyUI will call there (empty: unpatched)."""
    replace = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    return {key[:2]: patch for key, patch in replace.items()}


# ---------------------------------------------------------------------------- K/V recomputation
class KVCounter:
    """Counts calls of deadiff_core.attention.image_keys_values (the image K/V projection), wherever the
    pack imported it, per variant."""

    def __init__(self, pack: Pack):
        self.counts = collections.Counter()
        self.steps = collections.Counter()
        self.current = None
        self.original = None
        for name, module in list(sys.modules.items()):
            if (name == pack.root or name.startswith(pack.root + ".")) and hasattr(module, "image_keys_values"):
                self.original = self.original or module.image_keys_values
                if module.image_keys_values is self.original:
                    module.image_keys_values = self._counted

    def _counted(self, *args, **kwargs):
        self.counts[self.current] += 1
        return self.original(*args, **kwargs)


# ----------------------------------------------------------------------------- tensor accounting
def tensor_bytes(obj, skip_types=(), seen=None, storages=None) -> int:
    """Bytes of the distinct tensor storages reachable from `obj` (dicts, sequences, object attributes),
    not descending into `skip_types`."""

    seen = set() if seen is None else seen
    storages = {} if storages is None else storages
    stack = [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, skip_types):
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            storages[(storage.data_ptr(), item.device)] = storage.nbytes()
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            stack.extend(item)
        elif hasattr(item, "__dict__") and not isinstance(item, type):
            stack.extend(vars(item).values())
    return sum(storages.values())


# ---------------------------------------------------------------------------------------- ops
@contextlib.contextmanager
def count_ops():
    """Every aten op run inside (including host reads: aten._local_scalar_dense = a device->host sync)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    counter = collections.Counter()

    class Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            counter[str(func.overloadpacket.__name__)] += 1
            return func(*args, **(kwargs or {}))

    with Mode():
        yield counter


# --------------------------------------------------------------------------------------- CPU run
class StepTimer:
    """Wall time of every UNet forward (one model call = cond + uncond batch), per variant label."""
    def __init__(self, unet):
        self.times = collections.defaultdict(list)   # wall seconds
        self.cpu = collections.defaultdict(list)     # this process's CPU seconds (all threads)
        self.label = None
        self._t = self._c = None
        unet.register_forward_pre_hook(self._pre)
        unet.register_forward_hook(self._post)

    def _pre(self, module, args):
        self._t, self._c = time.perf_counter(), time.process_time()

    def _post(self, module, args, output):
        if self.label is not None:
            self.times[self.label].append(time.perf_counter() - self._t)
            self.cpu[self.label].append(time.process_time() - self._c)


def sample(model, size: int, steps: int, conds, seed: int = 0, batch: int = 1):
    import comfy.sample

    positive, negative = conds
    latent = torch.zeros(batch, 4, size, size)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    return comfy.sample.sample(model, noise, steps, CFG, "euler", "normal", positive, negative, latent,
                               disable_pbar=True, seed=seed)


def make_conds(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return ([[torch.randn(1, 77, 768, generator=gen), {}]], [[torch.randn(1, 77, 768, generator=gen), {}]])


def half_mask(size: int):
    mask = torch.zeros(1, size * 8, size * 8)
    mask[..., : size * 4] = 1.0
    return mask


def build_variants(pack: Pack, base, deadiff, style_a, style_b, size: int, record: dict | None = None):
    """label -> patched MODEL, in the order measured. The 16-key floor records the attn2 inputs it sees."""
    mask = half_mask(size)
    variants = {
        "unpatched": base,
        "floor (16 zero keys)": with_floor(base, 16, record),
        "floor (32 zero keys)": with_floor(base, 32),
        "DEADiff style (official)": pack.apply(base, deadiff, style=style_a),
        "DEADiff style + attn_mask": pack.apply(base, deadiff, style=style_a, attn_mask=mask),
        "two Apply nodes": pack.apply(pack.apply(base, deadiff, style=style_a), deadiff, style=style_b),
        "two Apply + two masks": pack.apply(pack.apply(base, deadiff, style=style_a, attn_mask=mask), deadiff,
                                            style=style_b, attn_mask=1.0 - mask),
    }
    for label, (start, end) in WINDOWS.items():
        variants[label] = pack.apply(base, deadiff, start_at=start, end_at=end, style=style_a)
    return variants


def replay_inputs(record: dict):
    """The captured per-site (q, k, v, extra_options) of one model call (cond + uncond), in UNet order."""
    from deadiff_core.routing import SITES

    by_block = {}
    for (block, q_shape), value in record.items():
        if q_shape[0] == 2:
            by_block.setdefault(block, value)
    missing = [s.comfy_block for s in SITES if s.comfy_block not in by_block]
    if missing:
        raise RuntimeError(f"no captured attn2 inputs (cond + uncond batch) for {missing}")
    return [(site.comfy_block, by_block[site.comfy_block]) for site in SITES]


def _call_site(patch, q, k, v, options):
    from comfy.ldm.modules.attention import optimized_attention

    if patch is None:  # what CrossAttention.forward does without a replace patch
        return optimized_attention(q, k, v, options["n_heads"], attn_precision=options.get("attn_precision"),
                                   transformer_options=options)
    return patch(q, k, v, options)


def replay_step(patches: dict, inputs, sigma_value: float, sync=None):
    """One step's 16 attn2 calls through `patches` (ComfyUI's optimized_attention where none); seconds."""
    sigmas = torch.full_like(inputs[0][1][3]["sigmas"], sigma_value)  # a fresh tensor per model call, as ComfyUI's
    t = time.perf_counter()
    for block, (q, k, v, extra_options) in inputs:
        _call_site(patches.get(tuple(block)), q, k, v, dict(extra_options, sigmas=sigmas))
    if sync:
        sync()
    return time.perf_counter() - t


def replay_interleaved(states, patches: dict, inputs, rounds: int, sync=None, kv=None, tag=None) -> dict:
    """Per step, the sum over the 16 sites of the fastest of `rounds` calls, the variants' calls interleaved
    site by site (so a burst of other work on the machine hits every variant alike). Round 0 warms up.

    states: (name, label, sigma); patches: label -> {block: patch}. Each round gives every state a fresh
    sigmas tensor shared by its 16 calls, as one model call does."""
    best = {}
    for r in range(rounds + 1):
        sigmas = {name: torch.full_like(inputs[0][1][3]["sigmas"], sigma) for name, _, sigma in states}
        for i, (block, (q, k, v, extra_options)) in enumerate(inputs):
            shift = (r + i) % len(states)
            for name, label, _ in states[shift:] + states[:shift]:
                if kv is not None:
                    kv.current = (label, tag)
                options = dict(extra_options, sigmas=sigmas[name])
                patch = patches[label].get(tuple(block))
                t = time.perf_counter()
                _call_site(patch, q, k, v, options)
                if sync:
                    sync()
                seconds = time.perf_counter() - t
                if r:
                    best[(name, i)] = min(best.get((name, i), seconds), seconds)
        if kv is not None:
            for _, label, _ in states:
                kv.steps[(label, tag)] += 1
    return {name: sum(best[(name, i)] for i in range(len(inputs))) for name, _, _ in states}


def tiny_inputs(inputs):
    """The same 16 calls with one query and one text token (cond + uncond kept): the attention math and the
    copies shrink to almost nothing, what is left is each patch's host cost (Python, op dispatch) per step;
    against the floor patch, that is what DEADiff's bookkeeping costs the CPU that feeds a GPU."""
    tiny = []
    for block, (q, k, v, extra_options) in inputs:
        options = dict(extra_options, activations_shape=(q.shape[0], q.shape[2], 1, 1))
        tiny.append((block, (q[:, :1].contiguous(), k[:, :1].contiguous(), v[:, :1].contiguous(), options)))
    return tiny


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
                bias[:, q.shape[1] // 2:, k.shape[1]:] = float("-inf")
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
    log(f"ComfyUI picks: optimized_attention = {chosen.get(attention.optimized_attention, '?')}, "
        f"optimized_attention_masked = {chosen.get(attention.optimized_attention_masked, '?')}")
    log("attention function | masked | ms per step (16 sites, fastest per site) | max abs error vs float32 at "
        "head width 40 / 80 / 160")
    log("---|---|---|---")
    for masked in (False, True):
        patches = {name: BackendPatch(fn, masked) for name, fn in functions.items()}
        states = [(name, name, 1.0) for name in functions]
        errors = {}
        for name, patch in patches.items():
            errors[name] = {}
            for block, (q, k, v, options) in inputs:
                width = q.shape[-1] // options["n_heads"]
                if width in errors[name]:
                    continue
                try:
                    out = patch(q, k, v, options)
                    zeros, bias = patch.extras(q, k)
                    ref = reference_attention(q, torch.cat([k, zeros], 1), torch.cat([v, zeros], 1),
                                              options["n_heads"], bias)
                    errors[name][width] = f"{(out.float() - ref).abs().max().item():.1e}"
                except Exception as e:  # a backend that cannot run these shapes
                    errors[name][width] = f"fails ({type(e).__name__})"
        runnable = [st for st in states if not any(e.startswith("fails") for e in errors[st[0]].values())]
        times = replay_interleaved(runnable, {n: {b: p for b, _ in inputs} for n, p in patches.items()}, inputs,
                                   rounds, sync=sync) if runnable else {}
        for name in functions:
            cell = f"{1000 * times[name]:.1f}" if name in times else "-"
            log(f"{name} | {'yes' if masked else 'no'} | {cell} | "
                + " / ".join(errors[name].get(w, "-") for w in (40, 80, 160)))


def sdpa_kernels(inputs) -> None:
    """Which of PyTorch's SDPA kernels take these attn2 shapes (head widths 40/80/160, 93 keys, fp16), without and
    with an additive float mask: what attention_pytorch gets on this GPU."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernels = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    if hasattr(SDPBackend, "CUDNN_ATTENTION"):
        kernels.insert(2, SDPBackend.CUDNN_ATTENTION)
    seen = {}
    for block, (q, k, v, options) in inputs:
        heads = options["n_heads"]
        width = q.shape[-1] // heads
        if width in seen:
            continue
        seen[width] = True
        b = q.shape[0]
        k, v = (torch.cat([t, torch.zeros(b, 16, t.shape[2], device=t.device, dtype=t.dtype)], 1) for t in (k, v))
        qh, kh, vh = (t.view(b, -1, heads, width).transpose(1, 2) for t in (q, k, v))
        bias = torch.zeros(b, 1, q.shape[1], k.shape[1], device=q.device, dtype=q.dtype)
        bias[:, :, q.shape[1] // 2:, -16:] = float("-inf")
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
        log(f"SDPA kernels, head width {width}, {q.shape[1]} queries x {k.shape[1]} keys, {q.dtype}: " + "; ".join(cells))


def window_sigmas(model, start: float, end: float) -> dict:
    """A sigma inside and one outside the start/end window."""
    sampling = model.get_model_object("model_sampling")
    inside = (start + end) / 2
    outside = end + (1 - end) / 2 if end < 1 else start / 2
    return {"in window": float(sampling.percent_to_sigma(inside)),
            "out of window": float(sampling.percent_to_sigma(outside))}


def cpu_bench(args, pack, kv, folder: Path):
    log("\n== building the full-size SD1.5 UNet (random weights, fp32) ==")
    t = time.perf_counter()
    base = full_size_sd15(torch.float32)
    log(f"built in {time.perf_counter() - t:.0f} s: "
        f"{sum(p.numel() for p in base.model.diffusion_model.parameters()) / 1e6:.0f} M parameters")
    deadiff = pack.load(fake_deadiff(folder, SAMPLING_DIMS, "deadiff_sampling.safetensors"))
    gen = torch.Generator().manual_seed(3)
    style_a = pack.style(deadiff, torch.rand(1, 256, 256, 3, generator=gen))
    style_b = pack.style(deadiff, torch.rand(1, 256, 256, 3, generator=gen))
    conds = make_conds()
    timer = StepTimer(base.model.diffusion_model)
    sampling = base.get_model_object("model_sampling")
    mid_sigma = float(sampling.percent_to_sigma(0.25))
    results = {}
    cache_bytes = {}
    op_counts = {}
    host = {}
    for size in args.sizes:
        log(f"\n== {size}x{size} latent ({size * 8}x{size * 8} px), batch cond+uncond ==")
        record = {}
        variants = build_variants(pack, base, deadiff, style_a, style_b, size, record)
        if size == args.sizes[0]:
            kv.current, timer.label = ("warm-up", size), None
            sample(variants["unpatched"], size, 1, conds)  # allocator, thread pools, first-call costs
        step_variants = [v for v in variants if v in (args.step_variants if size <= 32 else args.step_variants_large)]
        labels = list(variants)
        # whole steps, interleaved in rounds; the order rotates between rounds
        t_size = time.perf_counter()
        for r in range(args.rounds):
            order = step_variants[r % len(step_variants):] + step_variants[: r % len(step_variants)]
            for label in order:
                kv.current = (label, size)
                kv.steps[(label, size)] += args.steps
                timer.label = (label, size)
                sample(variants[label], size, args.steps, conds, seed=r)
                timer.label = None
            log(f"  round {r + 1}/{args.rounds}: " + ", ".join(
                f"{label.split(' (')[0]} {timer.times[(label, size)][-1]:.2f}s" for label in step_variants))
        log(f"  whole steps: {time.perf_counter() - t_size:.0f} s")
        inputs = replay_inputs(record)
        # replay of the 16 attn2 calls, interleaved
        t_replay = time.perf_counter()
        patches = {label: attn2_patches(model) for label, model in variants.items()}
        states = []
        for label in labels:
            if label in WINDOWS:
                for state, sigma in window_sigmas(base, *WINDOWS[label]).items():
                    states.append((f"{label}, {state}", label, sigma))
            else:
                states.append((label, label, mid_sigma))
        if size != args.sizes[0]:  # both windows cost the same per state; one is enough above the first size
            states = [st for st in states if not st[1].startswith("window 0.3")]
        threads = torch.get_num_threads()
        torch.set_num_threads(args.replay_threads)
        replay = replay_interleaved(states, patches, inputs, args.replay_rounds, kv=kv, tag=size)
        torch.set_num_threads(threads)
        log(f"  attn2 replay: {time.perf_counter() - t_replay:.0f} s")
        if size == args.sizes[-1]:
            tiny = tiny_inputs(inputs)
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # 1-token tensors do not use a second thread; spares the barrier waits
            host.update(replay_interleaved(states, patches, tiny, args.host_rounds))
            torch.set_num_threads(threads)
            for name, label, sigma in states:
                with count_ops() as ops:
                    replay_step(patches[label], inputs, sigma)
                op_counts[(name, size)] = ops
            if args.backends:
                log(f"\n== ComfyUI's attention functions on the {size}x{size} attn2 shapes (+16 keys), "
                    f"{args.replay_threads} thread(s) ==")
                torch.set_num_threads(args.replay_threads)
                attention_backends(inputs, args.backend_rounds)
                torch.set_num_threads(threads)
        replayed = {label for _, label, _ in states}
        for label, model in variants.items():
            if label == "unpatched" or label.startswith("floor") or label not in replayed:
                continue
            cache_bytes[(label, size)] = tensor_bytes(attn2_patches(model), skip_types=(type(deadiff), torch.nn.Module))
        results[size] = (states, replay,
                         {label: timer.times[(label, size)] for label in step_variants},
                         {label: timer.cpu[(label, size)] for label in step_variants})
        del variants, patches, inputs, record
        gc.collect()
    report_cpu(args, results, op_counts, cache_bytes, kv, deadiff, host)


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def report_cpu(args, results, op_counts, cache_bytes, kv, deadiff, host):
    log("\n== per-step time, CPU fp32 ==")
    log("variant | latent | step s, fastest (median, n) | vs unpatched | step CPU s | vs unpatched | "
        "attn2 ms/step | overhead vs unpatched (attn2) | above floor (attn2)")
    log("---|---|---|---|---|---|---|---|---")
    for size, (states, replay, walls, cpus) in results.items():
        base_step = min(walls["unpatched"])
        base_cpu = min(cpus["unpatched"])
        for name, label, _ in states:
            floor = "floor (32 zero keys)" if label.startswith("two") else "floor (16 zero keys)"
            whole = label in walls and (name == label or name.endswith(", in window"))
            cells = ["-"] * 4
            if whole:
                wall, cpu = walls[label], cpus[label]
                cells = [f"{min(wall):.2f} ({statistics.median(wall):.2f}, {len(wall)})", _pct(min(wall) / base_step - 1),
                         f"{min(cpu):.2f}", _pct(min(cpu) / base_cpu - 1)]
            over = (replay[name] - replay["unpatched"]) / base_step
            above = ((replay[name] - replay[floor]) / base_step
                     if not label.startswith(("unpatched", "floor")) else None)
            log(f"{name} | {size}x{size} | " + " | ".join(cells) + f" | {1000 * replay[name]:.1f} | {_pct(over)} | "
                f"{'-' if above is None else _pct(above)}")
    log("step: one model call (cond + uncond) in a KSampler run, wall and process CPU time (both threads), "
        f"fastest of n; attn2: the step's 16 cross-attention calls replayed {args.replay_rounds} times, interleaved "
        f"with the other variants, fastest of each call, summed, on {args.replay_threads} thread(s) (slower than "
        f"the step's {torch.get_num_threads()}, so the overhead below is an upper bound); overhead (attn2) = (attn2 of the variant - attn2 unpatched) / fastest unpatched step; above floor = the "
        "same against the floor with as many extra keys (16; 32 for two Apply nodes). Window rows: the attn2 "
        "replay at a sigma inside / outside the window.")

    log(f"\n== host cost of the 16 attn2 calls per step (1 query and 1 text token, 1 thread, fastest of "
        f"{args.host_rounds} per site) ==")
    for name, seconds in host.items():
        label = next(label for n, label, _ in next(iter(results.values()))[0] if n == name)
        floor = "floor (32 zero keys)" if label.startswith("two") else "floor (16 zero keys)"
        versus = "" if label.startswith(("unpatched", "floor")) else f", {1e6 * (seconds - host[floor]):+.0f} us vs {floor}"
        log(f"{name}: {1e6 * seconds:.0f} us ({1e6 * (seconds - host['unpatched']):+.0f} us vs unpatched{versus})")

    log("\n== aten ops per step in the 16 attn2 calls, beyond the floor with as many keys ==")
    for (name, size), ops in op_counts.items():
        if size != args.sizes[-1] or name.startswith(("unpatched", "floor")):
            continue
        floor_name = "floor (32 zero keys)" if name.startswith("two") else "floor (16 zero keys)"
        if "out of window" in name:
            floor_name = "unpatched"
        extra = ops - op_counts[(floor_name, size)]
        fewer = op_counts[(floor_name, size)] - ops
        syncs = ops.get("_local_scalar_dense", 0)
        log(f"{name} ({size}x{size}): {sum(ops.values())} ops (vs {floor_name}: +{dict(extra) or 0}"
            f"{', -' + str(dict(fewer)) if fewer else ''}); host reads (syncs): {syncs}")

    log("\n== image K/V computations (deadiff_core.attention.image_keys_values calls) ==")
    for (label, size), n in sorted(kv.counts.items(), key=lambda x: (str(x[0][1]), str(x[0][0]))):
        if label is None or label == "warm-up":
            continue
        log(f"{label} @ {size}x{size}: computed {n} times while serving {kv.steps[(label, size)]} steps "
            "(whole-step model calls + replayed steps)")

    log("\n== device memory for sampling ==")
    injection = deadiff.model.injection
    numel = sum(p.numel() for p in injection.parameters())
    log(f"32 site projections (i_to_k/i_to_v): {numel / 1e6:.1f} M values = {numel * 2 / 1e6:.1f} MB at fp16 "
        f"({numel * 4 / 1e6:.1f} MB at fp32, this run)")
    for (label, size), nbytes in cache_bytes.items():
        log(f"per-site caches + tokens after the run, {label} @ {size}x{size}: {nbytes / 1e6:.2f} MB fp32 "
            f"(~{nbytes / 2e6:.2f} MB at fp16)")


def encoder_bytes_full_size() -> tuple[int, int]:
    """fp16 bytes of the DEADiff encoders (one shared vision tower, two Q-Formers, two ProjLayers) and of the
    32 projections, for the official dimensions (built on the meta device: no memory used)."""
    import deadiff_fakes
    from deadiff_core.config import infer_config
    from deadiff_core.model import DEADiffModel

    shapes = {k: shape for k, (shape, _) in deadiff_fakes.official_shapes(**deadiff_fakes.FULL_SIZE).items()}
    config = infer_config(shapes, shared_vision=True)
    with torch.device("meta"):
        model = DEADiffModel(config)
    encoder = sum(p.numel() for p in model.encoder.parameters()) * 2
    injection = sum(p.numel() for p in model.injection.parameters()) * 2
    towers = len(model.encoder.vision)
    return encoder, injection, towers


# --------------------------------------------------------------------------------------- GPU run
class Cuda:
    """The CUDA calls of the GPU part; with `dry` (--gpu-path-on-cpu) they do nothing, so the GPU code path
    can be exercised on a CPU-only machine (tiny sizes, nothing measured)."""

    def __init__(self, dry: bool):
        self.dry = dry

    def sync(self):
        if not self.dry:
            torch.cuda.synchronize()

    def reset_peak(self):
        if not self.dry:
            torch.cuda.reset_peak_memory_stats()

    def allocated(self) -> int:
        return 0 if self.dry else torch.cuda.memory_allocated()

    def peak(self) -> int:
        return 0 if self.dry else torch.cuda.max_memory_allocated()

    def name(self) -> str:
        return "CPU (dry run of the GPU path)" if self.dry else torch.cuda.get_device_name()

    @contextlib.contextmanager
    def sync_warnings(self):
        """Warnings CUDA raises at each host-device synchronization inside."""
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if not self.dry:
                torch.cuda.set_sync_debug_mode("warn")
            try:
                yield caught
            finally:
                if not self.dry:
                    torch.cuda.set_sync_debug_mode(0)


def gpu_bench(args, pack, kv, folder: Path, dry: bool = False) -> None:
    import comfy.model_management as mm
    import deadiff_fakes

    cuda = Cuda(dry)
    size, steps = (8, 2) if dry else (64, args.gpu_steps)
    dtype = torch.float32 if dry else torch.float16
    log(f"\n== GPU: {cuda.name()} ({mm.get_torch_device()}), {str(dtype).split('.')[-1]}, "
        f"{size * 8}x{size * 8} ({size}x{size} latent), {steps} steps ==")
    t = time.perf_counter()
    base = full_size_sd15(dtype, seed=0)
    dims = SAMPLING_DIMS if dry else deadiff_fakes.FULL_SIZE
    deadiff = pack.load(fake_deadiff(folder, dims, "deadiff_gpu.safetensors"))
    log(f"UNet + {'small' if dry else 'full-size'} DEADiff file (random weights) ready in "
        f"{time.perf_counter() - t:.0f} s; encoder dtype {next(deadiff.model.encoder.parameters()).dtype}")
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(8, 512, 512, 3, generator=gen)
    try:
        encoder_gpu(pack, deadiff, images, cuda, reps=(2, 1) if dry else (16, 4))
    except Exception as e:  # keep the sampling figures coming
        log(f"encoder part failed: {type(e).__name__}: {e}")
    style_a = pack.style(deadiff, images[:1])
    style_b = pack.style(deadiff, images[1:2])
    conds = make_conds()
    record = {}
    variants = build_variants(pack, base, deadiff, style_a, style_b, size, record)
    labels = ["unpatched", "floor (16 zero keys)", "DEADiff style (official)", "DEADiff style + attn_mask",
              "two Apply nodes", "window 0.0-0.5"]
    for label in labels:  # warm-up: loads the UNet, kernels, caches; the floor records the attn2 inputs
        kv.current = (label, "gpu")
        sample(variants[label], size, 2, conds)
    seconds = collections.defaultdict(list)
    peaks = collections.defaultdict(list)
    rounds = 1 if dry else args.gpu_rounds
    for r in range(rounds):
        for label in labels[r % len(labels):] + labels[: r % len(labels)]:
            kv.current = (label, "gpu")
            cuda.sync()
            cuda.reset_peak()
            before = cuda.allocated()
            t = time.perf_counter()
            sample(variants[label], size, steps, conds, seed=r)
            cuda.sync()
            seconds[label].append(time.perf_counter() - t)
            peaks[label].append((cuda.peak(), before))
    log("variant | it/s (fastest of %d) | vs unpatched | peak VRAM GiB | peak vs unpatched MB | allocated before MB"
        % rounds)
    log("---|---|---|---|---|---")
    base_s = min(seconds["unpatched"])
    base_peak = max(p for p, _ in peaks["unpatched"])
    for label in labels:
        s_ = min(seconds[label])
        peak = max(p for p, _ in peaks[label])
        resident = max(b for _, b in peaks[label])
        log(f"{label} | {steps / s_:.2f} | {_pct(base_s / s_ - 1)} | {peak / 2**30:.3f} | "
            f"{(peak - base_peak) / 1e6:+.1f} | {resident / 1e6:.0f}")
    log("(it/s = steps / wall time of the whole KSampler call, model already loaded; peak = "
        "torch.cuda.max_memory_allocated during it)")
    # the attn2 replay on the device, and the host-device sync check
    inputs = replay_inputs(record)
    patch_sets = {label: attn2_patches(variants[label]) for label in labels}
    sampling = base.get_model_object("model_sampling")
    sigma = float(sampling.percent_to_sigma(0.25))
    states = [(label, label, sigma) for label in labels]
    replay = replay_interleaved(states, patch_sets, inputs, 2 if dry else args.replay_rounds * 4, sync=cuda.sync,
                                kv=kv, tag="gpu")
    log("attn2 replay on the device (the 16 cross-attention calls of one step, fastest per site): " + ", ".join(
        f"{label} {1000 * replay[label]:.2f} ms" for label in labels))
    if args.backends:
        attention_backends(inputs, 2 if dry else args.backend_rounds * 4, sync=cuda.sync)
        if not dry:
            sdpa_kernels(inputs)
    cache = {label: tensor_bytes(patch_sets[label], skip_types=(type(deadiff), torch.nn.Module))
             for label in labels[2:]}
    log("per-site caches + tokens on the device after the run: " + ", ".join(
        f"{label} {nbytes / 1e6:.2f} MB" for label, nbytes in cache.items()))
    log("image K/V computations (image_keys_values calls) during the GPU runs: " + ", ".join(
        f"{label} {kv.counts[(label, 'gpu')]}" for label in labels[2:]))
    for label in labels[2:]:
        cuda.sync()
        with cuda.sync_warnings() as caught:
            replay_step(patch_sets[label], inputs, sigma)
        syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
        log(f"host-device syncs in one step of {label}'s attn2 patches: {len(syncs)}"
            + (f" ({str(syncs[0].message)[:120]})" if syncs else ""))


def encoder_gpu(pack, deadiff, images, cuda: Cuda, reps=(16, 4)) -> None:
    """Encoder weights on the device, and batch 1 vs batch 8 per image, model only and through the node."""
    import comfy.model_management as mm

    mm.unload_all_models()
    mm.soft_empty_cache()
    cuda.sync()
    before = cuda.allocated()
    mm.load_models_gpu([deadiff.encoder_patcher])
    cuda.sync()
    weights = cuda.allocated() - before
    encoder = deadiff.model.encoder
    on_device = images.to(deadiff.encoder_patcher.load_device)
    where = dict(device=deadiff.encoder_patcher.load_device, dtype=deadiff.encoder_dtype)
    encoder.encode(on_device[:1], "style", **where)  # warm-up, both batch sizes
    encoder.encode(on_device, "style", **where)
    cuda.reset_peak()
    per_image = {}
    for batch, n in ((1, reps[0]), (8, reps[1])):
        cuda.sync()
        t = time.perf_counter()
        for i in range(n):
            encoder.encode(on_device[i % 8: i % 8 + 1] if batch == 1 else on_device, "style", **where)
        cuda.sync()
        per_image[batch] = (time.perf_counter() - t) / n / batch
    peak = cuda.peak() - before
    mm.free_memory(1e30, deadiff.encoder_patcher.load_device)  # what ComfyUI does when it needs the memory
    cuda.sync()
    log(f"encoder weights on the device: {weights / 1e9:.3f} GB (target <= 1.5 GB); peak while encoding 8: "
        f"{peak / 1e9:.3f} GB; left after offload: {(cuda.allocated() - before) / 1e6:.0f} MB")
    log(f"encoder, model only: batch 1 {1000 * per_image[1]:.2f} ms/image, batch 8 {1000 * per_image[8]:.2f} "
        f"ms/image: batch 8 is {per_image[1] / per_image[8]:.1f}x faster per image (target >= 4x)")
    style = pack.nodes["DEADiffStyleEncoder"]
    style.execute(deadiff, images[:1])
    cuda.sync()
    t = time.perf_counter()
    for i in range(8):
        style.execute(deadiff, images[i:i + 1])
    cuda.sync()
    one_by_one = (time.perf_counter() - t) / 8
    t = time.perf_counter()
    style.execute(deadiff, images)
    cuda.sync()
    batched = (time.perf_counter() - t) / 8
    log(f"encoder node (loads the encoders if ComfyUI freed them, encodes): one by one {1000 * one_by_one:.1f} ms/image, "
        f"a batch of 8 {1000 * batched:.1f} ms/image: {one_by_one / batched:.1f}x")


# -------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[32, 64],
                        help="latent sizes for the CPU run, comma-separated (default 32,64)")
    parser.add_argument("--rounds", type=int, default=2, help="whole-step rounds per size (default 2)")
    parser.add_argument("--steps", type=int, default=1, help="sampling steps per whole-step run (default 1)")
    parser.add_argument("--replay-rounds", type=int, default=8, help="attn2 replay rounds per size (default 8)")
    parser.add_argument("--all-steps", action="store_true",
                        help="whole steps for every variant at every size (default: unpatched, floor, style, mask "
                             "and two Apply at 32x32; unpatched, floor and style above; the rest by replay)")
    parser.add_argument("--replay-threads", type=int, default=1,
                        help="torch threads for the attn2 replays (default 1: a thread that is never kept waiting "
                             "for a second one, so other work on the machine distorts it least)")
    parser.add_argument("--host-rounds", type=int, default=50, help="rounds of the host-cost replay (default 50)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="32x32 only, 1 round, 4 replay rounds")
    parser.add_argument("--no-gpu", action="store_true", help="skip the CUDA part even when CUDA is available")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU part (GPU only)")
    parser.add_argument("--no-backends", dest="backends", action="store_false",
                        help="skip timing ComfyUI's attention functions on the attn2 shapes")
    parser.add_argument("--backend-rounds", type=int, default=3, help="rounds per attention function (default 3)")
    parser.add_argument("--gpu-path-on-cpu", action="store_true",
                        help="exercise the GPU part's code on the CPU at tiny sizes (checks the script, measures nothing)")
    parser.add_argument("--gpu-steps", type=int, default=20)
    parser.add_argument("--gpu-rounds", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.rounds, args.replay_rounds, args.host_rounds = [32], 1, 4, 20
    args.step_variants = ["unpatched", "floor (16 zero keys)", "DEADiff style (official)",
                          "DEADiff style + attn_mask", "two Apply nodes"]
    args.step_variants_large = args.step_variants[:3]
    if args.all_steps:
        args.step_variants += ["floor (32 zero keys)", "two Apply + two masks", *WINDOWS]
        args.step_variants_large = args.step_variants
    t0 = time.perf_counter()
    use_gpu = torch.cuda.is_available() and not args.no_gpu
    session = boot(cpu=not use_gpu)
    import comfy.ldm.modules.attention as attention
    import comfy.model_management as mm

    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    pack = Pack(session)
    kv = KVCounter(pack)
    log(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}; ComfyUI "
        f"{session.comfyui_dir.name}; booted in {time.perf_counter() - t0:.0f} s; load average "
        f"{os.getloadavg()[0]:.2f} (other work on the machine skews every timing)")
    log(f"ComfyUI attention: optimized_attention = {attention.optimized_attention.__name__}, "
        f"optimized_attention_masked = {attention.optimized_attention_masked.__name__} (device {mm.get_torch_device()})")
    encoder, injection, towers = encoder_bytes_full_size()
    log(f"full-size DEADiff at fp16: encoders {encoder / 1e9:.3f} GB ({towers} vision tower; target <= 1.5 GB "
        f"on the device while encoding), 32 site projections {injection / 1e6:.1f} MB (target <= 40 MB extra "
        f"while sampling, with the caches)")
    with tempfile.TemporaryDirectory(prefix="deadiff-bench-sampling-") as tmp:
        if not args.no_cpu:
            if use_gpu:
                log("(CPU part skipped on a CUDA machine: ComfyUI runs on the GPU there; use a CPU-only machine)")
            else:
                cpu_bench(args, pack, kv, Path(tmp))
        if use_gpu:
            gpu_bench(args, pack, kv, Path(tmp))
        elif args.gpu_path_on_cpu:
            gpu_bench(args, pack, kv, Path(tmp), dry=True)
        elif not args.no_gpu:
            log("\n(no CUDA device: the GPU part, fp16 512x512 it/s, VRAM and encoder batching, was not run)")
    session.close()
    log(f"\ntotal wall time {time.perf_counter() - t0:.0f} s; load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
