"""Per-picture cost of a batch in one ComfyUI session against the same pictures as single runs.

    python bench/bench_batch.py                 # 10 jobs: 10 single runs, then one 10-job batch
    python bench/bench_batch.py --jobs 4 --steps 2

Both sides run `python -m deadiff_runner.cli` as a user does (a process each), with the tiny random
test models (the runner's test hook, as tests/test_runner.py uses it; a real SD1.5 file cannot exist
here) and a tiny synthetic DEADiff file in the official layout. A single run pays ComfyUI's boot and
the model loads every time; the batch pays them once and ComfyUI's cache serves the loaders to the
later jobs. Printed: wall time per picture for each side and their ratio (measured in the same run),
and a single run's boot + load cost (its wall time minus the batch's per-picture time after the
first). With tiny models the sampling is nearly free, so the ratio shows the fixed cost a batch
saves; with real weights the load (a 9 GB file, or the 1.43 GB compact one) is a larger share.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


def cli(args, env) -> tuple[float, str]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "deadiff_runner.cli", *args], env=env, capture_output=True, text=True, cwd=REPO
    )
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"the runner failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return elapsed, result.stderr


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10, help="pictures on each side (default 10)")
    parser.add_argument("--steps", type=int, default=4, help="sampling steps per picture (default 4)")
    parser.add_argument("--size", type=int, default=64, help="picture width and height (default 64)")
    args = parser.parse_args(argv)

    import torch
    from PIL import Image

    import deadiff_fakes

    from_env = os.environ.get("COMFYUI_DIR")
    if not from_env:
        raise SystemExit("set COMFYUI_DIR to the ComfyUI to measure (e.g. ~/.cache/comfyui-deadiff/ComfyUI-0.3.75)")
    work = Path(tempfile.mkdtemp(prefix="deadiff-bench-batch-"))
    base = work / "base"
    (base / "models" / "deadiff").mkdir(parents=True)
    deadiff_fakes.place(base / "models" / "deadiff", "deadiff_v1.ckpt", seed=0)
    style = work / "style.png"
    Image.fromarray(
        (torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(1)).numpy() * 255).astype("uint8")
    ).save(style)
    env = {**os.environ, "PYTHONPATH": str(REPO), "DEADIFF_RUNNER_TEST_PACK": str(REPO / "tests" / "comfy_test_pack")}
    common = [
        "--base-directory",
        str(base),
        "--style",
        str(style),
        "--steps",
        str(args.steps),
        "--width",
        str(args.size),
        "--height",
        str(args.size),
        "-q",
    ]
    prompts = [f"picture number {i}" for i in range(args.jobs)]

    try:
        return _measure(args, work, common, prompts, env, from_env)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _measure(args, work: Path, common: list, prompts: list, env: dict, from_env: str) -> int:
    import torch

    singles = []
    for i, prompt in enumerate(prompts):
        elapsed, _ = cli([*common, "--prompt", prompt, "--seed", str(i), "-o", str(work / f"single_{i}.png")], env)
        singles.append(elapsed)
        print(f"single run {i + 1}/{args.jobs}: {elapsed:.1f} s", file=sys.stderr)
    batch_args = [a for p in prompts for a in ("--prompt", p)]
    elapsed, stderr = cli([*common, *batch_args, "--seed", "0", "-o", str(work / "batch") + "/"], env)

    boot = float(re.search(r"ComfyUI boot ([\d.]+) s", stderr).group(1))
    first = float(re.search(r"first picture ([\d.]+) s", stderr).group(1))
    later = re.search(r"then ([\d.]+) s per picture", stderr)
    steady = float(later.group(1)) if later else first
    single_each = sum(singles) / len(singles)
    batch_each = elapsed / args.jobs
    print(
        f"ComfyUI {from_env}, {args.jobs} pictures of {args.size}x{args.size}, {args.steps} steps, tiny models, "
        f"CPU threads {torch.get_num_threads()}"
    )
    print(f"single runs : {single_each:6.1f} s per picture (wall, {args.jobs} processes)")
    print(
        f"one batch   : {batch_each:6.1f} s per picture (wall {elapsed:.1f} s for {args.jobs}: boot {boot:.1f} s, "
        f"first picture {first:.1f} s, then {steady:.1f} s each)"
    )
    print(
        f"ratio       : a batch picture costs {batch_each / single_each:.2f}x a single run's "
        f"({single_each / batch_each:.1f}x faster)"
    )
    print(
        f"single run's boot + load: {single_each - steady:.1f} s of its {single_each:.1f} s "
        f"(boot alone {boot:.1f} s in the batch's process)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
