"""Benchmark of deadiff_core (a script, not a test): loading the official .ckpt vs the compact file,
and encoder speed. Prints figures; ratios are measured in the same run.

    python bench/bench_core.py               # full-size random weights in the official layout (~8 GB temp file)
    python bench/bench_core.py --ckpt deadiff_v1.ckpt
    python bench/bench_core.py --small       # tiny dims, a quick smoke run

Targets (the ones docs/benchmarks.md checks): compact <= 1.6 GB at fp16; loading it >= 5x faster than
the .ckpt; peak RSS while loading the .ckpt <= 1.3x the bytes we keep.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

LOAD_PROBE = r"""
import json, sys, time
import torch, transformers  # imported before measuring: the baseline every ComfyUI process already has
from deadiff_core import load_deadiff

def high_water():  # VmHWM starts afresh at exec, unlike ru_maxrss, which a child inherits
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

base = high_water()
t = time.perf_counter()
model = load_deadiff(sys.argv[1], dtype=getattr(torch, sys.argv[2]))
seconds = time.perf_counter() - t
peak = high_water()
kept = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"seconds": seconds, "peak": peak, "baseline": base, "kept": kept,
                  "estimate": model.load_report.compact_speedup, "log_line": model.load_report.message()}))
"""


def full_size_checkpoint(path: Path) -> None:
    import torch

    import deadiff_fakes

    sd = deadiff_fakes.make_official_state_dict(seed=0, frozen_parts=False, **deadiff_fakes.FULL_SIZE)
    for key, shape, dtype in deadiff_fakes.official_table():  # the frozen SD1.5 parts at their real size
        if key not in sd:
            sd[key] = torch.zeros(shape, dtype=getattr(torch, dtype))
    deadiff_fakes.write_official_ckpt(path, sd)


def small_checkpoint(path: Path) -> None:
    import deadiff_fakes

    deadiff_fakes.write_official_ckpt(path, deadiff_fakes.make_official_state_dict(seed=0))


def measure_load(path: Path, dtype: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", LOAD_PROBE, str(path), dtype], check=True, capture_output=True, text=True, cwd=REPO
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def encoder_times(path: Path) -> list[str]:
    import torch

    from deadiff_core import load_deadiff

    lines = []
    devices = [("cpu", torch.float32)] + ([("cuda", torch.float16)] if torch.cuda.is_available() else [])
    for device, dtype in devices:
        model = load_deadiff(path, dtype=dtype).to(device)
        for batch in (1, 8):
            images = torch.rand(batch, 512, 512, 3, device=device)
            model.encoder.encode(images[:1], "style")  # warm-up
            if device == "cuda":
                torch.cuda.synchronize()
            reps = 3 if batch == 1 else 1
            t = time.perf_counter()
            for _ in range(reps):
                model.encoder.encode(images, "style")
            if device == "cuda":
                torch.cuda.synchronize()
            per_image = (time.perf_counter() - t) / reps / batch
            dtype_name = str(dtype).split(".")[-1]
            lines.append(f"encoder {device} {dtype_name} batch {batch}: {per_image * 1000:.1f} ms per image")
        del model
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", type=Path, help="an existing official checkpoint (default: generate one)")
    parser.add_argument("--small", action="store_true", help="tiny dimensions, for a quick run")
    args = parser.parse_args()
    import torch

    from deadiff_core.convert import convert

    with tempfile.TemporaryDirectory(prefix="deadiff-bench-") as tmp:
        ckpt = args.ckpt
        if ckpt is None:
            ckpt = Path(tmp) / "deadiff_v1.ckpt"
            t = time.perf_counter()
            (small_checkpoint if args.small else full_size_checkpoint)(ckpt)
            print(
                f"generated {ckpt.name} ({'tiny' if args.small else 'full-size'} random weights, official layout) "
                f"in {time.perf_counter() - t:.0f} s"
            )
        compact = Path(tmp) / "deadiff_v1_compact.safetensors"
        compact32 = Path(tmp) / "deadiff_v1_compact_fp32.safetensors"
        t = time.perf_counter()
        convert(str(ckpt), str(compact), "fp16")
        gib = 1 << 30
        print(f"converted in {time.perf_counter() - t:.1f} s")
        convert(str(ckpt), str(compact32), "fp32")
        print(
            f"file sizes: official .ckpt {ckpt.stat().st_size / gib:.2f} GiB, compact fp16 "
            f"{compact.stat().st_size / gib:.3f} GiB ({compact.stat().st_size / 1e9:.3f} GB; target <= 1.6 GB), "
            f"compact fp32 {compact32.stat().st_size / gib:.3f} GiB"
        )
        print(
            f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}"
        )
        results = {}
        for label, path in (("official .ckpt", ckpt), ("compact fp16", compact), ("compact fp32", compact32)):
            for dtype in ("float32", "float16"):
                r = measure_load(path, dtype)
                results[(label, dtype)] = r
                grown = r["peak"] - r["baseline"]
                print(
                    f"load {label:15s} as {dtype}: {r['seconds']:6.2f} s, peak RSS {r['peak'] / gib:.2f} GiB "
                    f"(+{grown / gib:.2f} GiB over the imports), kept {r['kept'] / gib:.2f} GiB, "
                    f"load growth / kept = {grown / r['kept']:.2f}x (target <= 1.3x)"
                )
        for label in ("compact fp16", "compact fp32"):
            for dtype in ("float32", "float16"):
                speedup = results[("official .ckpt", dtype)]["seconds"] / results[(label, dtype)]["seconds"]
                print(f"{label} loads {speedup:.1f}x faster than the .ckpt as {dtype} (target >= 5x)")
        for dtype in ("float32", "float16"):  # the loader's log line estimates the fp16 compact file's gain
            r = results[("official .ckpt", dtype)]
            measured = r["seconds"] / results[("compact fp16", dtype)]["seconds"]
            print(
                f"as {dtype}: the loader's log line estimates compact fp16 about {r['estimate']:.1f}x faster "
                f"(bytes to read); measured {measured:.1f}x. It logs: {r['log_line']}"
            )
        for line in encoder_times(compact):
            print(line)


if __name__ == "__main__":
    main()
