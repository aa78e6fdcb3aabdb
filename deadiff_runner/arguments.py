"""deadiff-run's command line: its options, and what can be said about them alone.

Kept apart from running so `--help` and a wrong number are answered in one line, before ComfyUI is found
or booted.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import models_home
from . import workflows as wf
from .console import EXIT_USAGE


class UsageError(ValueError):
    """A wrong argument (exit 2)."""


class _OneLineArgumentParser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineArgumentParser(
        prog="deadiff-run",
        description="Run a DEADiff example workflow headless through ComfyUI and save the picture as a PNG "
        "(with the workflow embedded, like ComfyUI's Save Image). Several --prompt / --style / --seed, "
        "or --jobs FILE, make a batch run in one ComfyUI session.",
        epilog=f"Examples: {', '.join(wf.example_names())}. Exit status: 0 done, 1 ComfyUI failed a job or a "
        "download failed, 2 something missing or a wrong argument.",
    )
    g = p.add_argument_group("what to run")
    g.add_argument(
        "--workflow",
        "-w",
        metavar="NAME|PATH",
        default=None,
        help=f"an example name (default {wf.DEFAULT_WORKFLOW}) or a UI workflow .json file",
    )
    g.add_argument(
        "--style",
        action="append",
        default=[],
        metavar="IMAGE",
        help="style reference image; once per style reference the workflow has, repeated for a batch",
    )
    g.add_argument(
        "--content",
        action="append",
        default=[],
        metavar="IMAGE",
        help="content reference image (content / style-and-content examples)",
    )
    g.add_argument(
        "--control",
        action="append",
        default=[],
        metavar="IMAGE",
        help="image whose edges the ControlNet follows (controlnet example)",
    )
    g.add_argument(
        "--prompt",
        "-p",
        action="append",
        default=[],
        help="the positive prompt (default: the workflow's); repeat it for a batch",
    )
    g.add_argument(
        "--negative",
        "-n",
        help="the negative prompt (default: the workflow's; the examples use the official DEADiff negative prompt)",
    )
    g.add_argument(
        "--seed",
        type=int,
        action="append",
        default=[],
        help="sampler seed (default: the workflow's); repeat it for a batch",
    )
    g.add_argument("--steps", type=int, help="sampling steps (default: the workflow's; 50 in the examples)")
    g.add_argument("--cfg", type=float, help="CFG scale (default: the workflow's; 8 in the examples)")
    g.add_argument("--width", type=int, help="picture width in pixels, a multiple of 8 (default: the workflow's)")
    g.add_argument("--height", type=int, help="picture height in pixels, a multiple of 8 (default: the workflow's)")
    g.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="NODE.INPUT=VALUE",
        help="set any widget; NODE is a node id, title, type or name as printed, e.g. --set "
        "'Load LoRA.lora_name=x.safetensors', --set 'Apply Disentangled Conditioning.end_at=0.8' "
        "or --set 5.style_weight=0.8",
    )
    g.add_argument(
        "--jobs",
        metavar="FILE",
        help="a batch from a file: .txt (one prompt a line), .csv (columns "
        "prompt, style, seed, ...) or .json (a list of jobs, or a grid)",
    )
    g.add_argument(
        "--output",
        "-o",
        metavar="PATH.png",
        help="where to write the picture (default: ./<workflow>_<seed>.png); for a batch a folder "
        "(ending in /), NAME.png (NAME-001.png, ...) or a pattern with {index}, {seed}, {prompt}",
    )
    c = p.add_argument_group("where things are")
    c.add_argument(
        "--comfyui-dir",
        metavar="DIR",
        help="the ComfyUI to run (default: $COMFYUI_DIR, else the ComfyUI whose custom_nodes holds this pack)",
    )
    c.add_argument(
        "--base-directory",
        metavar="DIR",
        help="ComfyUI base folder with models/, input/, custom_nodes/ "
        "(ComfyUI's --base-directory; default: the ComfyUI folder)",
    )
    c.add_argument(
        "--models-dir",
        metavar="DIR",
        help="the models folder (DIR/deadiff, DIR/checkpoints, ...). Default, the first that applies: "
        "--base-directory's models, the ComfyUI holding this pack, a ComfyUI you named, "
        f"${models_home.ENV_VAR}, {models_home.user_data_dir()}",
    )
    c.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is available (slow)")
    c.add_argument(
        "--only-deadiff-nodes", action="store_true", help="load no other custom node pack (the examples need none)"
    )
    c.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="URL",
        help="queue the jobs on this running ComfyUI server (e.g. http://127.0.0.1:8188) instead of "
        "running ComfyUI here; repeat it to spread a batch over several servers",
    )
    d = p.add_argument_group("weights")
    d.add_argument(
        "--download",
        action="store_true",
        help="download the missing deadiff_v1.ckpt (qth/DEADiff) and SD1.5 "
        "(stable-diffusion-v1-5/stable-diffusion-v1-5) from Hugging Face into the models folder "
        "(HF_TOKEN, HF_ENDPOINT and HF_HUB_OFFLINE apply)",
    )
    d.add_argument(
        "--convert",
        action="store_true",
        help="convert deadiff_v1.ckpt once to deadiff_v1_compact.safetensors next to it (about 1.4 GB, "
        "quicker to load) and use that",
    )
    o = p.add_argument_group("other")
    o.add_argument(
        "--check",
        action="store_true",
        help="report what the workflow needs and what is missing; exit 0 when complete, 2 otherwise",
    )
    o.add_argument("--list", action="store_true", help="list the example workflows and exit")
    o.add_argument("--verbose", "-v", action="store_true", help="show ComfyUI's log and tracebacks")
    o.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    return p


def check_options(args) -> None:
    """What can be said about the numbers and flags alone."""
    for option in ("width", "height"):
        value = getattr(args, option)
        if value is not None and (value <= 0 or value % 8):
            raise UsageError(f"--{option} {value}: use a positive multiple of 8 (e.g. {max(8, (value // 8) * 8)})")
    if args.steps is not None and args.steps < 1:
        raise UsageError(f"--steps {args.steps}: give at least 1 sampling step")
    if args.cfg is not None and args.cfg < 0:
        raise UsageError(f"--cfg {args.cfg}: the CFG scale cannot be negative")
    for seed in args.seed:
        if not 0 <= seed <= 0xFFFFFFFFFFFFFFFF:
            raise UsageError(f"--seed {seed}: a seed is between 0 and 2**64-1")
    for spec in args.overrides:
        target, sep, _value = spec.partition("=")
        node_ref, dot, name = target.rpartition(".")
        if not sep or not dot or not node_ref.strip() or not name.strip():
            raise UsageError(f"--set {spec!r}: write NODE.INPUT=VALUE, e.g. --set 'Load LoRA.lora_name=x.safetensors'")
    for url in args.server:
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"--server {url}: give the server's URL, e.g. http://127.0.0.1:8188")
    if args.server and (args.download or args.convert):
        raise UsageError(
            "--download / --convert work on this machine's models folder; with --server, the servers "
            "use their own models (run the download on each server's machine)"
        )
    if args.server and (args.comfyui_dir or args.base_directory or args.models_dir or args.cpu):
        raise UsageError(
            "--server runs the jobs on the servers: --comfyui-dir, --base-directory, --models-dir and "
            "--cpu concern a ComfyUI on this machine and do not apply"
        )
    if args.jobs and not Path(args.jobs).expanduser().is_file():
        raise UsageError(f"--jobs {args.jobs}: no such file")
