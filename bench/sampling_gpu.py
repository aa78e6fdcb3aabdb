"""bench_sampling's GPU part (CUDA): fp16 512x512 it/s and peak VRAM per variant, the attn2 replay on the
device, host-device syncs, and the DEADiff encoders at batch 1 vs batch 8. --gpu-path-on-cpu runs the same
code on a CPU at tiny sizes (Cuda(dry=True)), to check the script where there is no GPU."""

from __future__ import annotations

import collections
import contextlib
import time
from pathlib import Path

import torch

from sampling_backends import attention_backends, sdpa_kernels
from sampling_measure import replay_inputs, replay_interleaved, replay_step, tensor_bytes
from sampling_setup import (
    SAMPLING_DIMS,
    attn2_patches,
    build_variants,
    fake_deadiff,
    full_size_sd15,
    log,
    make_conds,
    pct,
    sample,
)


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
    log(
        f"\n== GPU: {cuda.name()} ({mm.get_torch_device()}), {str(dtype).split('.')[-1]}, "
        f"{size * 8}x{size * 8} ({size}x{size} latent), {steps} steps =="
    )
    t = time.perf_counter()
    base = full_size_sd15(dtype, seed=0)
    dims = SAMPLING_DIMS if dry else deadiff_fakes.FULL_SIZE
    deadiff = pack.load(fake_deadiff(folder, dims, "deadiff_gpu.safetensors"))
    log(
        f"UNet + {'small' if dry else 'full-size'} DEADiff file (random weights) ready in "
        f"{time.perf_counter() - t:.0f} s; encoder dtype {next(deadiff.model.encoder.parameters()).dtype}"
    )
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
    labels = [
        "unpatched",
        "floor (16 zero keys)",
        "DEADiff style (official)",
        "DEADiff style + attn_mask",
        "two Apply nodes",
        "window 0.0-0.5",
    ]
    for label in labels:  # warm-up: loads the UNet, kernels, caches; the floor records the attn2 inputs
        kv.current = (label, "gpu")
        sample(variants[label], size, 2, conds)
    seconds = collections.defaultdict(list)
    peaks = collections.defaultdict(list)
    rounds = 1 if dry else args.gpu_rounds
    for r in range(rounds):
        for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
            kv.current = (label, "gpu")
            cuda.sync()
            cuda.reset_peak()
            before = cuda.allocated()
            t = time.perf_counter()
            sample(variants[label], size, steps, conds, seed=r)
            cuda.sync()
            seconds[label].append(time.perf_counter() - t)
            peaks[label].append((cuda.peak(), before))
    log(
        "variant | it/s (fastest of %d) | vs unpatched | peak VRAM GiB | peak vs unpatched MB | allocated before MB"
        % rounds
    )
    log("---|---|---|---|---|---")
    base_s = min(seconds["unpatched"])
    base_peak = max(p for p, _ in peaks["unpatched"])
    for label in labels:
        s_ = min(seconds[label])
        peak = max(p for p, _ in peaks[label])
        resident = max(b for _, b in peaks[label])
        log(
            f"{label} | {steps / s_:.2f} | {pct(base_s / s_ - 1)} | {peak / 2**30:.3f} | "
            f"{(peak - base_peak) / 1e6:+.1f} | {resident / 1e6:.0f}"
        )
    log(
        "(it/s = steps / wall time of the whole KSampler call, model already loaded; peak = "
        "torch.cuda.max_memory_allocated during it)"
    )
    # the attn2 replay on the device, and the host-device sync check
    inputs = replay_inputs(record)
    patch_sets = {label: attn2_patches(variants[label]) for label in labels}
    sampling = base.get_model_object("model_sampling")
    sigma = float(sampling.percent_to_sigma(0.25))
    states = [(label, label, sigma) for label in labels]
    replay = replay_interleaved(
        states, patch_sets, inputs, 2 if dry else args.replay_rounds * 4, sync=cuda.sync, kv=kv, tag="gpu"
    )
    log(
        "attn2 replay on the device (the 16 cross-attention calls of one step, fastest per site): "
        + ", ".join(f"{label} {1000 * replay[label]:.2f} ms" for label in labels)
    )
    if args.backends:
        attention_backends(inputs, 2 if dry else args.backend_rounds * 4, sync=cuda.sync)
        if not dry:
            sdpa_kernels(inputs)
    cache = {
        label: tensor_bytes(patch_sets[label], skip_types=(type(deadiff), torch.nn.Module)) for label in labels[2:]
    }
    log(
        "per-site caches + tokens on the device after the run: "
        + ", ".join(f"{label} {nbytes / 1e6:.2f} MB" for label, nbytes in cache.items())
    )
    log(
        "image K/V computations (image_keys_values calls) during the GPU runs: "
        + ", ".join(f"{label} {kv.counts[(label, 'gpu')]}" for label in labels[2:])
    )
    for label in labels[2:]:
        cuda.sync()
        with cuda.sync_warnings() as caught:
            replay_step(patch_sets[label], inputs, sigma)
        syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
        log(
            f"host-device syncs in one step of {label}'s attn2 patches: {len(syncs)}"
            + (f" ({str(syncs[0].message)[:120]})" if syncs else "")
        )


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
            encoder.encode(on_device[i % 8 : i % 8 + 1] if batch == 1 else on_device, "style", **where)
        cuda.sync()
        per_image[batch] = (time.perf_counter() - t) / n / batch
    peak = cuda.peak() - before
    mm.free_memory(1e30, deadiff.encoder_patcher.load_device)  # what ComfyUI does when it needs the memory
    cuda.sync()
    log(
        f"encoder weights on the device: {weights / 1e9:.3f} GB (target <= 1.5 GB); peak while encoding 8: "
        f"{peak / 1e9:.3f} GB; left after offload: {(cuda.allocated() - before) / 1e6:.0f} MB"
    )
    log(
        f"encoder, model only: batch 1 {1000 * per_image[1]:.2f} ms/image, batch 8 {1000 * per_image[8]:.2f} "
        f"ms/image: batch 8 is {per_image[1] / per_image[8]:.1f}x faster per image (target >= 4x)"
    )
    style = pack.nodes["DEADiffStyleEncoder"]
    style.execute(deadiff, images[:1])
    cuda.sync()
    t = time.perf_counter()
    for i in range(8):
        style.execute(deadiff, images[i : i + 1])
    cuda.sync()
    one_by_one = (time.perf_counter() - t) / 8
    t = time.perf_counter()
    style.execute(deadiff, images)
    cuda.sync()
    batched = (time.perf_counter() - t) / 8
    log(
        "encoder node (loads the encoders if ComfyUI freed them, encodes): "
        f"one by one {1000 * one_by_one:.1f} ms/image, "
        f"a batch of 8 {1000 * batched:.1f} ms/image: {one_by_one / batched:.1f}x"
    )
