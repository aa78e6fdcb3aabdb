"""One prepared GPU check of DEADiff on ComfyUI 0.33 with DynamicVRAM (a script, not a test).

It starts the real ComfyUI server WITHOUT --cpu (the only way DynamicVRAM turns on: ComfyUI enables it
on NVIDIA GPUs by default), drives it over its HTTP API, and prints:

- whether DynamicVRAM was active, and which patcher class ComfyUI gave the UNet and DEADiff's encoders
  and projections (all dynamic, or a legacy one that downgrades the load to estimate-based freeing);
- device memory before encoding, after encoding and after sampling (what the GPU has in use, torch's
  share, and each loaded model's resident size as ComfyUI counts it);
- the DEADiff Style Encoder's time at batch 1 and batch 8 (per image), through the node;
- the time per sampling step at 512x512 fp16 (batch 1, cfg 7.5, euler): unpatched SD1.5, the 16-key
  floor (the same UNet attending to 16 zero keys at DEADiff's 16 sites, nothing else) and DEADiff style
  transfer, and DEADiff's overhead against both. A step's time is the difference between a 25-step and a
  5-step run of the same prompt divided by 20, so fixed costs cancel out; variants interleave in rounds
  (each variant's first run in a round, which pays for switching models, is not timed), medians reported.

Weights are random (no real files here): the full SD1.5 UNet (ComfyUI's SD15 config, written once as a
diffusion-model file and loaded by ComfyUI's own "Load Diffusion Model" node, so it gets the patcher
ComfyUI gives real models) and a full-size DEADiff file (tests/deadiff_fakes.py). Speed and memory do
not depend on the values. The prompt encoder is the test pack's tiny CLIP at width 768.

    python bench/gpu_check.py                  # CUDA machine, ComfyUI 0.33 (estimated 3-4 minutes; not yet timed)
    python bench/gpu_check.py --dry-run        # CPU: the same flow with tiny models and --cpu (measures nothing)
    python bench/gpu_check.py --print-graphs   # only build and print the prompts (no ComfyUI needed)

ComfyUI is $COMFYUI_DIR or ~/.cache/comfyui-deadiff/ComfyUI-0.33.0; run it with a Python that has that
ComfyUI's requirements (including comfy-aimdo and torchaudio) and this pack's. Generated weights are
cached in ~/.cache/comfyui-deadiff/gpu_check (about 3.5 GB) for the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

# the sibling modules are found because Python puts this script's folder (bench/) on sys.path
from gpu_check_graphs import VARIANTS, Plan, encode_graph, probe_graph, sample_graph
from gpu_check_measure import measure, report
from gpu_check_server import Server, base_directory, log

CACHE = Path(os.environ.get("DEADIFF_CACHE", Path.home() / ".cache" / "comfyui-deadiff"))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--comfyui-dir",
        default=os.environ.get("COMFYUI_DIR") or str(CACHE / "ComfyUI-0.33.0"),
        help="the ComfyUI to run (default $COMFYUI_DIR, else the cached 0.33.0)",
    )
    parser.add_argument("--python", default=sys.executable, help="Python for the server (default: this one)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    parser.add_argument(
        "--steps",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[5, 25],
        help="short,long step counts whose difference gives a step's time (default 5,25)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="sampling rounds (default 3)")
    parser.add_argument("--encoder-reps", type=int, default=4, help="timed encoder runs per batch size (default 4)")
    parser.add_argument("--budget", type=float, default=270, help="seconds after which no new sampling round starts")
    parser.add_argument("--files", default=str(CACHE / "gpu_check"), help="where generated weights are kept")
    parser.add_argument("--dry-run", action="store_true", help="tiny models, --cpu: check the flow on a CPU")
    parser.add_argument("--print-graphs", action="store_true", help="print the prompts and exit (no ComfyUI)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary base directory (and its server.log)")
    args = parser.parse_args(argv)
    if len(args.steps) != 2 or not 0 < args.steps[0] < args.steps[1]:
        parser.error("--steps takes two step counts, short < long, e.g. 5,25")
    if args.size % 8:
        parser.error("--size must be a multiple of 8")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    plan = Plan.from_args(args)
    if args.print_graphs:
        graphs = {
            "probe": probe_graph(plan, "probe"),
            "encode b8": encode_graph(plan, 8, 1),
            "encode b8 without encoder": encode_graph(plan, 8, 1, encode=False),
        }
        graphs.update({f"{v} {plan.steps[1]} steps": sample_graph(plan, v, plan.steps[1], 1) for v in VARIANTS})
        log(json.dumps(graphs, indent=1))
        return
    start = time.monotonic()
    comfyui = Path(args.comfyui_dir).resolve()
    if not (comfyui / "main.py").is_file():
        raise SystemExit(f"{comfyui} is not a ComfyUI checkout (no main.py); set --comfyui-dir or COMFYUI_DIR")
    files = Path(args.files)
    files.mkdir(parents=True, exist_ok=True)
    base = base_directory(plan, comfyui, files)
    log(f"files ready in {time.monotonic() - start:.0f} s; ComfyUI {comfyui}")
    server = Server(comfyui, base, args.python, cpu=plan.dry)
    try:
        log(f"server up in {time.monotonic() - start:.0f} s")
        results = measure(server, plan, deadline=start + args.budget)
        report(results, plan, server)
    except Exception:
        log(server.log_tail())
        raise
    finally:
        server.stop()
        if args.keep:
            log(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    log(f"\ntotal {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
