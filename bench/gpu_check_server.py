"""The ComfyUI server bench/gpu_check.py measures, and the files it is given: a base directory with this
pack, the test pack and the bench nodes, and random weights written once (full size, or tiny for a dry run).

The server is ComfyUI's own main.py in its own process, driven over its HTTP API, so it gets the patchers
and memory management a real server gives (DynamicVRAM needs a server started without --cpu).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from gpu_check_graphs import DEADIFF_FILE, UNET_FILE, Plan

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"


def log(*parts) -> None:
    print(*parts, flush=True)


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
