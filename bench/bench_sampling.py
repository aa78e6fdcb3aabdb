"""Benchmark of sampling with DEADiff (a script, not a test): what Apply Disentangled Conditioning costs per
sampling step over the same model unpatched, and over the floor (the same UNet attending to 16 extra
zero keys at the 16 sites, nothing else). Every figure is a ratio measured in one run.

    python bench/bench_sampling.py            # CPU: 32x32 and 64x64 latents (about 3 min on 2 idle cores)
    python bench/bench_sampling.py --quick    # 32x32 only, fewer rounds: a smoke run (about 1 min)
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

The code, by concern: sampling_setup.py (ComfyUI, models, the measured variants, the floor patch),
sampling_measure.py (step timer, attn2 replay, counters), sampling_backends.py (ComfyUI's attention
functions compared), sampling_cpu.py (the CPU part and its report), sampling_gpu.py (the CUDA part).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

# each of these imports sampling_setup, which puts the repository and tests/ on sys.path
from sampling_cpu import cpu_bench
from sampling_gpu import gpu_bench
from sampling_measure import KVCounter
from sampling_setup import WINDOWS, Pack, boot, encoder_bytes_full_size, log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[32, 64],
        help="latent sizes for the CPU run, comma-separated (default 32,64)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="whole-step rounds per size (default 2)")
    parser.add_argument("--steps", type=int, default=1, help="sampling steps per whole-step run (default 1)")
    parser.add_argument("--replay-rounds", type=int, default=8, help="attn2 replay rounds per size (default 8)")
    parser.add_argument(
        "--all-steps",
        action="store_true",
        help="whole steps for every variant at every size (default: unpatched, floor, style, mask "
        "and two Apply at 32x32; unpatched, floor and style above; the rest by replay)",
    )
    parser.add_argument(
        "--replay-threads",
        type=int,
        default=1,
        help="torch threads for the attn2 replays (default 1: a thread that is never kept waiting "
        "for a second one, so other work on the machine distorts it least)",
    )
    parser.add_argument("--host-rounds", type=int, default=50, help="rounds of the host-cost replay (default 50)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="32x32 only, 1 round, 4 replay rounds")
    parser.add_argument("--no-gpu", action="store_true", help="skip the CUDA part even when CUDA is available")
    parser.add_argument("--no-cpu", action="store_true", help="skip the CPU part (GPU only)")
    parser.add_argument(
        "--no-backends",
        dest="backends",
        action="store_false",
        help="skip timing ComfyUI's attention functions on the attn2 shapes",
    )
    parser.add_argument("--backend-rounds", type=int, default=3, help="rounds per attention function (default 3)")
    parser.add_argument(
        "--gpu-path-on-cpu",
        action="store_true",
        help="exercise the GPU part's code on the CPU at tiny sizes (checks the script, measures nothing)",
    )
    parser.add_argument("--gpu-steps", type=int, default=20)
    parser.add_argument("--gpu-rounds", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.rounds, args.replay_rounds, args.host_rounds = [32], 1, 4, 20
    args.step_variants = [
        "unpatched",
        "floor (16 zero keys)",
        "DEADiff style (official)",
        "DEADiff style + attn_mask",
        "two Apply nodes",
    ]
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
    log(
        f"machine: {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}; ComfyUI "
        f"{session.comfyui_dir.name}; booted in {time.perf_counter() - t0:.0f} s; load average "
        f"{os.getloadavg()[0]:.2f} (other work on the machine skews every timing)"
    )
    log(
        f"ComfyUI attention: optimized_attention = {attention.optimized_attention.__name__}, "
        f"optimized_attention_masked = {attention.optimized_attention_masked.__name__} "
        f"(device {mm.get_torch_device()})"
    )
    encoder, projections, towers = encoder_bytes_full_size()
    log(
        f"full-size DEADiff at fp16: encoders {encoder / 1e9:.3f} GB ({towers} vision tower; target <= 1.5 GB "
        f"on the device while encoding), 32 site projections {projections / 1e6:.1f} MB (target <= 40 MB extra "
        f"while sampling, with the caches)"
    )
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
