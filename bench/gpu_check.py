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
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
CACHE = Path(os.environ.get("DEADIFF_CACHE", Path.home() / ".cache" / "comfyui-deadiff"))
UNET_FILE = "sd15_random_unet_fp16.safetensors"
DEADIFF_FILE = "deadiff_random_full.safetensors"
CFG = 7.5
NEGATIVE = "lowres"


def log(*parts) -> None:
    print(*parts, flush=True)


# ----------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Plan:
    """What one run does; --dry-run shrinks everything so the flow runs on a CPU in a minute."""

    dry: bool
    size: int  # image side in pixels (latent = size / 8)
    steps: tuple  # (short, long) sampling runs; a step = (long - short) / (long - short steps)
    rounds: int  # sampling rounds (each runs every variant at both step counts)
    encoder_reps: int  # timed encoder runs per batch size
    context_dim: int  # text / DEADiff token width (768 for SD1.5)

    @classmethod
    def from_args(cls, args) -> "Plan":
        if args.dry_run:
            return cls(True, 64, (1, 2), 1, 1, 64)
        return cls(False, args.size, tuple(args.steps), args.rounds, args.encoder_reps, 768)


class Graph:
    """An API-format prompt built node by node (ids are strings, as the front end sends them)."""

    def __init__(self):
        self.prompt: dict = {}

    def node(self, class_type: str, **inputs) -> str:
        node_id = str(len(self.prompt) + 1)
        self.prompt[node_id] = {
            "class_type": class_type,
            "inputs": {k: ([v[0], v[1]] if isinstance(v, tuple) else v) for k, v in inputs.items()},
        }
        return node_id


def out(node_id: str, index: int = 0) -> tuple:
    return (node_id, index)


def _common(g: Graph, plan: Plan):
    """The shared head of every prompt: text encoder, DEADiff file, and (full run) the SD1.5 UNet. The
    same inputs every time, so ComfyUI runs them once and reuses their outputs."""
    tiny = g.node("DEADiffTest_TinySD15", seed=0, context_dim=plan.context_dim, model_channels=32)
    loader = g.node("DEADiffModelLoader", deadiff_name=DEADIFF_FILE)
    unet = out(tiny, 0) if plan.dry else out(g.node("UNETLoader", unet_name=UNET_FILE, weight_dtype="default"))
    return tiny, loader, unet


def probe_graph(plan: Plan, label: str) -> dict:
    g = Graph()
    g.node("DEADiffBench_Probe", label=label)
    return g.prompt


def encode_graph(plan: Plan, batch: int, seed: int, encode: bool = True, label: str | None = None) -> dict:
    """Reference images -> DEADiff Style Encoder -> probe. encode=False: the same without the encoder
    (what the prompt costs around it)."""
    g = Graph()
    _, loader, _ = _common(g, plan)
    image = g.node("DEADiffTest_ImageFromSeed", seed=seed, width=224, height=224, batch_size=batch, channels=3)
    after = out(g.node("DEADiffStyleEncoder", deadiff=out(loader), image=out(image))) if encode else out(image)
    g.node("DEADiffBench_Probe", label=label or f"encode b{batch}", after=after, deadiff=out(loader))
    return g.prompt


VARIANTS = ("unpatched", "floor (16 zero keys)", "DEADiff style")


def sample_graph(plan: Plan, variant: str, steps: int, seed: int, label: str | None = None) -> dict:
    """SD1.5 at plan.size, batch 1, cfg 7.5, euler: unpatched, with the floor patch or with DEADiff."""
    g = Graph()
    tiny, loader, model = _common(g, plan)
    if variant == "floor (16 zero keys)":
        model = out(g.node("DEADiffBench_Floor", model=model, extra=16))
    elif variant == "DEADiff style":
        image = g.node("DEADiffTest_ImageFromSeed", seed=1, width=224, height=224, batch_size=1, channels=3)
        style = g.node("DEADiffStyleEncoder", deadiff=out(loader), image=out(image))
        model = out(
            g.node(
                "DEADiffApply",
                model=model,
                deadiff=out(loader),
                style_weight=1.0,
                content_weight=1.0,
                start_at=0.0,
                end_at=1.0,
                style=out(style),
            )
        )
    elif variant != "unpatched":
        raise ValueError(f"unknown variant {variant!r}")
    pos = g.node("CLIPTextEncode", clip=out(tiny, 1), text="a lighthouse at dusk")
    neg = g.node("CLIPTextEncode", clip=out(tiny, 1), text=NEGATIVE)
    latent = g.node("EmptyLatentImage", width=plan.size, height=plan.size, batch_size=1)
    sample = g.node(
        "KSampler",
        model=model,
        seed=seed,
        steps=steps,
        cfg=CFG,
        sampler_name="euler",
        scheduler="normal",
        positive=out(pos),
        negative=out(neg),
        latent_image=out(latent),
        denoise=1.0,
    )
    g.node("DEADiffBench_Probe", label=label or f"{variant} {steps} steps", after=out(sample), deadiff=out(loader))
    return g.prompt


# ----------------------------------------------------------------------------------------- the files
def import_comfy(comfyui: Path):
    """ComfyUI's modules in this process, on the CPU (the server owns the GPU)."""
    sys.path.insert(0, str(comfyui))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args

    args.cpu = True


def write_unet(path: Path, comfyui: Path) -> None:
    """The full SD1.5 UNet with seeded random weights (the test pack's initialisation), fp16, bare UNet keys."""
    import importlib.util

    import torch
    from safetensors.torch import save_file

    import_comfy(comfyui)
    import comfy.supported_models

    spec = importlib.util.spec_from_file_location(
        "deadiff_gpu_check_tiny_models", TESTS / "comfy_test_pack" / "tiny_models.py"
    )
    tiny_models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tiny_models)
    config = comfy.supported_models.SD15(tiny_models.sd15_unet_config(context_dim=768, model_channels=320))
    model = config.get_model({}, "")
    tiny_models.init_parameters_(model.diffusion_model, seed=0)
    state = {k: v.to(torch.float16).contiguous() for k, v in model.diffusion_model.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp))
    tmp.replace(path)


def write_deadiff(path: Path, plan: Plan) -> None:
    sys.path.insert(0, str(TESTS))
    import deadiff_fakes

    dims = {} if plan.dry else deadiff_fakes.FULL_SIZE
    tmp = path.with_suffix(".tmp.safetensors")
    deadiff_fakes.write_official_safetensors(tmp, deadiff_fakes.make_official_state_dict(seed=0, **dims))
    tmp.replace(path)


def base_directory(plan: Plan, comfyui: Path, files: Path) -> Path:
    """A ComfyUI base directory: this pack, the test pack and the bench nodes; the generated weights."""
    base = Path(tempfile.mkdtemp(prefix="deadiff-gpu-check-"))
    custom = base / "custom_nodes"
    custom.mkdir()
    (custom / "ComfyUI-DEADiff").symlink_to(REPO, target_is_directory=True)
    (custom / "deadiff_test_pack").symlink_to(TESTS / "comfy_test_pack", target_is_directory=True)
    (custom / "deadiff_bench_nodes").symlink_to(REPO / "bench" / "gpu_check_nodes", target_is_directory=True)
    for sub in ("models/deadiff", "models/diffusion_models", "input", "output"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    deadiff = files / ("tiny_" + DEADIFF_FILE if plan.dry else DEADIFF_FILE)
    if not deadiff.exists():
        log(f"writing {deadiff.name} ...")
        write_deadiff(deadiff, plan)
    (base / "models" / "deadiff" / DEADIFF_FILE).symlink_to(deadiff)
    if not plan.dry:
        unet = files / UNET_FILE
        if not unet.exists():
            log(f"writing {unet.name} (860 M parameters) ...")
            write_unet(unet, comfyui)
        (base / "models" / "diffusion_models" / UNET_FILE).symlink_to(unet)
    return base


# ---------------------------------------------------------------------------------------- the server
class Server:
    """ComfyUI's main.py on a free loopback port (no --cpu unless a dry run), stopped by its process group."""

    def __init__(self, comfyui: Path, base: Path, python: str, cpu: bool):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "server.log"
        self._log = open(self.log_path, "wb")
        cmd = [
            python,
            "main.py",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--base-directory",
            str(base),
            "--disable-auto-launch",
            "--dont-print-server",
        ] + (["--cpu"] if cpu else [])
        log("server: " + " ".join(cmd[1:]))
        self.process = subprocess.Popen(
            cmd, cwd=comfyui, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 180
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                self.get("/system_stats")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"ComfyUI did not answer within 180 s:\n{self.log_tail()}") from None
                time.sleep(0.5)

    def log_tail(self, chars: int = 6000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=60) as r:
            return json.loads(r.read())

    def run(self, prompt: dict, timeout: float = 240) -> dict:
        """Queue `prompt`, wait for it; its history entry (raises with ComfyUI's message if it failed)."""
        request = urllib.request.Request(
            self.url + "/prompt",
            data=json.dumps({"prompt": prompt}).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                prompt_id = json.loads(r.read())["prompt_id"]
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"ComfyUI refused the prompt: {e.read().decode(errors='replace')}") from e
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                if entry["status"].get("status_str") != "success":
                    raise RuntimeError(f"prompt failed: {json.dumps(entry['status'])[:3000]}")
                return entry
            time.sleep(0.05)
        raise TimeoutError(f"prompt did not finish in {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


def seconds(entry: dict) -> float:
    """Execution time of a prompt: ComfyUI's execution_start to execution_success timestamps (ms)."""
    stamps = {event: data.get("timestamp") for event, data in entry["status"]["messages"]}
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000.0


def probes(entry: dict) -> list:
    return [json.loads(text) for output in entry["outputs"].values() for text in output.get("deadiff_bench", [])]


# -------------------------------------------------------------------------------------- measurement
def memory_line(reading: dict) -> str:
    parts = [f"{reading['label']}:"]
    if "device_used_mb" in reading:
        parts.append(
            f"GPU in use {reading['device_used_mb']:.0f} MB (torch allocated {reading['torch_allocated_mb']:.0f},"
            f" reserved {reading['torch_reserved_mb']:.0f})"
        )
    loaded = (
        ", ".join(
            f"{m['model']} {m['patcher']}{' dynamic' if m['dynamic'] else ''} {m['loaded_mb']:.0f}/"
            f"{m['size_mb']:.0f} MB"
            for m in reading["loaded"]
        )
        or "none"
    )
    parts.append(f"loaded models (resident/size): {loaded}")
    return " ".join(parts)


def measure(server: Server, plan: Plan, deadline: float) -> dict:
    results = {"memory": [], "encoder": {}, "steps": {}}
    first = probes(server.run(probe_graph(plan, "before anything")))[0]
    results["first"] = first
    results["memory"].append(first)

    # encoder: a warm-up (loads the file and the encoders), then timed runs with and without the encoder
    warm = server.run(encode_graph(plan, 1, seed=100, label="after encode (batch 1)"))
    results["memory"].append(probes(warm)[0])
    results["deadiff_patchers"] = probes(warm)[0].get("deadiff")
    for batch in (1, 8):
        server.run(encode_graph(plan, batch, seed=200 + batch))  # warm-up at this batch size
        with_encoder, without = [], []
        for rep in range(plan.encoder_reps):
            seed = 1000 * batch + rep
            with_encoder.append(seconds(server.run(encode_graph(plan, batch, seed))))
            without.append(seconds(server.run(encode_graph(plan, batch, seed, encode=False))))
        results["encoder"][batch] = (statistics.median(with_encoder) - statistics.median(without), with_encoder)
    results["memory"].append(probes(server.run(encode_graph(plan, 8, seed=300, label="after encode (batch 8)")))[0])

    # sampling: warm-up each variant, then rounds of (variant x short/long), order rotating per round
    for variant in VARIANTS:
        entry = server.run(sample_graph(plan, variant, plan.steps[0], seed=1, label=f"after sampling ({variant})"))
        results["memory"].append(probes(entry)[0])
        results.setdefault("sampling_patchers", {})[variant] = probes(entry)[0]["loaded"]
    times = {(v, s): [] for v in VARIANTS for s in plan.steps}
    for r in range(plan.rounds):
        if time.monotonic() > deadline:
            log(f"(time budget reached after {r} sampling rounds)")
            break
        order = VARIANTS[r % 3 :] + VARIANTS[: r % 3]
        for variant in order:
            # an untimed run first: switching variants (other patches, other models to load) costs once
            server.run(sample_graph(plan, variant, plan.steps[0], seed=50 + r))
            for steps in plan.steps:
                times[(variant, steps)].append(seconds(server.run(sample_graph(plan, variant, steps, seed=10 + r))))
    short, long = plan.steps
    for variant in VARIANTS:
        if times[(variant, long)]:
            per_step = [(b - a) / (long - short) for a, b in zip(times[(variant, short)], times[(variant, long)])]
            results["steps"][variant] = (statistics.median(per_step), per_step)
            results.setdefault("runs", {})[variant] = (times[(variant, short)], times[(variant, long)])
    results["memory"].append(probes(server.run(probe_graph(plan, "at the end")))[0])
    return results


def report(results: dict, plan: Plan, server: Server) -> None:
    first = results["first"]
    log("\n== DynamicVRAM")
    log(
        f"device: {first.get('device_name', first['device'])}; DynamicVRAM active: {first['dynamic_vram']}; "
        f"ComfyUI's CoreModelPatcher: {first['core_patcher']}"
    )
    enabled_line = [line for line in server.log_tail(200000).splitlines() if "DynamicVRAM" in line]
    log("server log: " + (enabled_line[0].strip() if enabled_line else "(no DynamicVRAM line)"))
    if results.get("deadiff_patchers"):
        d = results["deadiff_patchers"]
        log(
            f"DEADiff encoders: {d['encoder']['patcher']} (dynamic: {d['encoder']['dynamic']}); "
            f"site projections: {d['site_projections']['patcher']} (dynamic: {d['site_projections']['dynamic']})"
        )
    for variant, loaded in results.get("sampling_patchers", {}).items():
        legacy = [m["model"] for m in loaded if not m["dynamic"]]
        log(f"loaded after sampling {variant}: {len(loaded)} models, not dynamic: {legacy or 'none'}")

    log("\n== memory")
    for reading in results["memory"]:
        log(memory_line(reading))

    log("\n== DEADiff Style Encoder through the node (prompt time minus the same prompt without the encoder)")
    for batch, (secs, raw) in results["encoder"].items():
        log(
            f"batch {batch}: {1000 * secs:.1f} ms, {1000 * secs / batch:.1f} ms/image "
            f"(with encoder, each run: {', '.join(f'{1000 * x:.0f}' for x in raw)} ms)"
        )
    if 1 in results["encoder"] and 8 in results["encoder"] and results["encoder"][8][0] > 0:
        log(
            f"batch 8 per image is {results['encoder'][1][0] / (results['encoder'][8][0] / 8):.1f}x faster than batch 1"
        )

    log(
        f"\n== sampling step at {plan.size}x{plan.size}, batch 1, cfg {CFG} (cond + uncond), euler: "
        f"({plan.steps[1]}-step run - {plan.steps[0]}-step run) / {plan.steps[1] - plan.steps[0]}, median of rounds"
    )
    steps = results["steps"]
    for variant, (per_step, raw) in steps.items():
        short_runs, long_runs = results["runs"][variant]
        log(
            f"{variant}: {1000 * per_step:.2f} ms/step (rounds: {', '.join(f'{1000 * x:.2f}' for x in raw)}; "
            f"whole prompts, s: {plan.steps[0]} steps {short_runs}, {plan.steps[1]} steps {long_runs})"
        )
    if all(v in steps for v in VARIANTS):
        base, floor, ours = (steps[v][0] for v in VARIANTS)
        log(
            f"DEADiff vs unpatched: {100 * (ours / base - 1):+.1f}%; "
            f"floor vs unpatched: {100 * (floor / base - 1):+.1f}%; "
            f"DEADiff above the floor: {100 * (ours / floor - 1):+.1f}%"
        )
    if plan.dry:
        log("\n(dry run: tiny models on the CPU with --cpu; the figures above measure nothing)")


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
