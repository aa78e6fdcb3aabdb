"""Run the pack inside a real ComfyUI.

Two ways in, both loading this repository the way ComfyUI loads any custom node pack (a folder in
`custom_nodes`, imported by ComfyUI's own loader), next to the test-only pack `tests/comfy_test_pack`
(tiny random models built from ComfyUI's classes; never shipped inside the pack):

- `comfy` (session): ComfyUI booted in this process; graphs go through ComfyUI's own
  `execution.validate_prompt` and `execution.PromptExecutor`.
- `comfy_server` (session): the real server, `main.py --cpu`, on a free loopback port with a
  temporary base directory, stopped by its PID.

The ComfyUI tree is $COMFYUI_DIR when set (run the suite against your own checkout), else the pinned
0.3.75 fetched by scripts/fetch_comfyui.py into the cache outside the clone.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
TEST_PACK = TESTS / "comfy_test_pack"
PACK_DIR_NAME = "ComfyUI-DEADiff"
CACHE = Path(os.environ.get("DEADIFF_CACHE", Path.home() / ".cache" / "comfyui-deadiff"))


def _load_repo_module(name: str, relative: str):
    """A module of this repository by file (the repository root itself is never put on sys.path: its
    `nodes` package would shadow ComfyUI's nodes module)."""
    spec = importlib.util.spec_from_file_location(name, REPO / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# the executor construction the runner uses too: ComfyUI's main.py, repeated (see its docstring)
comfy_executor = _load_repo_module("deadiff_comfy_executor", "deadiff_runner/comfy_executor.py")


def comfyui_dir() -> Path:
    if os.environ.get("COMFYUI_DIR"):
        path = Path(os.environ["COMFYUI_DIR"]).resolve()
        if not (path / "comfyui_version.py").is_file():
            raise pytest.UsageError(f"COMFYUI_DIR={path} is not a ComfyUI checkout (no comfyui_version.py)")
        return path
    fetch_comfyui = _load_repo_module("fetch_comfyui", "scripts/fetch_comfyui.py")
    return Path(fetch_comfyui.fetch(str(CACHE / f"ComfyUI-{fetch_comfyui.COMFYUI_VERSION}")))


def make_base_directory(prefix: str) -> Path:
    """A ComfyUI base directory whose custom_nodes holds this pack and the test pack."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    custom_nodes = base / "custom_nodes"
    custom_nodes.mkdir()
    (custom_nodes / PACK_DIR_NAME).symlink_to(REPO, target_is_directory=True)
    (custom_nodes / "deadiff_test_pack").symlink_to(TEST_PACK, target_is_directory=True)
    for sub in ("models/deadiff", "models/loras", "models/checkpoints", "input", "output"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    return base


class MessageSink:
    """Stands where ComfyUI's PromptServer receives executor messages (no websocket in-process)."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.sockets_metadata = {}
        self.messages: list[tuple[str, object]] = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))


class GraphError(AssertionError):
    """A graph that ComfyUI refused to validate or failed to execute, with ComfyUI's own message."""

    def __init__(self, message: str, details=None):
        super().__init__(message)
        self.details = details


class InProcessComfy:
    """ComfyUI booted in this process; `run` executes an API-format prompt through the real executor."""

    def __init__(self, root: Path, base: Path):
        self.root = root
        self.base = base
        sys.path.insert(0, str(root))
        import comfy.options

        comfy.options.enable_args_parsing(False)
        from comfy.cli_args import args

        # before anything imports comfy.model_management or folder_paths
        args.cpu = True
        # as a user passing --cache-classic (an option of every ComfyUI): `run` reads every node's
        # outputs after the run, which the classic cache keeps for the whole prompt whatever the free
        # RAM (the RAM-pressure cache, newer ComfyUIs' default, may drop them on a busy machine)
        args.cache_classic = True
        args.base_directory = str(base)
        args.disable_auto_launch = True
        import folder_paths  # noqa: F401  (reads args.base_directory at import)
        import utils.extra_config  # noqa: F401  (as main.py does: before nodes.py puts comfy/ first on sys.path)
        import execution
        import nodes

        self.nodes = nodes
        self.execution = execution
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
        for required in ("DEADiffApply", "DEADiffTest_TinySD15"):
            if required not in nodes.NODE_CLASS_MAPPINGS:
                raise RuntimeError(f"ComfyUI did not load the node {required}; see the log above")
        self.last_sink: MessageSink | None = None

    def module(self, node_id: str):
        """The module object ComfyUI loaded for a node (never a second import of it)."""
        return sys.modules[self.nodes.NODE_CLASS_MAPPINGS[node_id].__module__]

    @property
    def pack(self):
        return self.module("DEADiffApply")

    def validate(self, prompt: dict):
        return asyncio.run(self.execution.validate_prompt(str(uuid.uuid4()), prompt, None))

    def run(self, prompt: dict) -> dict:
        """Validate and execute `prompt`; return {node_id: (output 0, output 1, ...)} for executed nodes.

        ComfyUI keeps each output as a list (one item per list-mapped call); this returns the first
        item of each, which is the whole value for ordinary nodes."""
        prompt = json.loads(json.dumps(prompt))  # API prompts are JSON; catch non-JSON values early
        valid = self.validate(prompt)
        if not valid[0]:
            raise GraphError(f"ComfyUI refused the prompt: {valid[1]} {valid[3]}", valid)
        sink = MessageSink()
        executor = comfy_executor.prompt_executor(sink)
        executor.execute(prompt, str(uuid.uuid4()), extra_data={}, execute_outputs=valid[2])
        self.last_sink = sink
        errors = [data for event, data in executor.status_messages if event == "execution_error"]
        if errors or not executor.success:
            err = errors[0] if errors else {}
            raise GraphError(
                f"{err.get('node_type')} failed: {err.get('exception_type')}: {err.get('exception_message')}", err
            )
        results = {}
        for node_id in prompt:
            entry = comfy_executor.cached_outputs(executor, node_id)
            if entry is not None:
                results[node_id] = tuple(out[0] if out else None for out in entry.outputs)
        return results


@pytest.fixture(scope="session")
def comfy() -> InProcessComfy:
    base = make_base_directory("deadiff-comfy-")
    try:
        yield InProcessComfy(comfyui_dir(), base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def front_end_args() -> list[str]:
    """`--front-end-root DIR` when $DEADIFF_FRONT_END_ROOT names another front end to serve (scripts/test.sh
    sets it from COMFYUI_FRONTEND); otherwise the server serves the comfyui-frontend-package installed
    with its own requirements."""
    root = os.environ.get("DEADIFF_FRONT_END_ROOT")
    if not root:
        return []
    if not (Path(root) / "index.html").is_file():
        raise pytest.UsageError(f"DEADIFF_FRONT_END_ROOT={root} holds no front end (no index.html)")
    return ["--front-end-root", root]


def front_end_version() -> str:
    """The version of the front end the test servers serve."""
    from importlib import metadata

    root = os.environ.get("DEADIFF_FRONT_END_ROOT")
    if root:
        # <target>/comfyui_frontend_package/static -> <target>/comfyui_frontend_package-X.Y.Z.dist-info
        for dist in metadata.distributions(path=[str(Path(root).parent.parent)]):
            if dist.metadata["Name"].lower().replace("_", "-") == "comfyui-frontend-package":
                return dist.version
        return "unknown"
    try:
        return metadata.version("comfyui-frontend-package")
    except metadata.PackageNotFoundError:
        return "not installed"


def pytest_report_header(config):
    root = comfyui_dir()
    version = _load_repo_module("fetch_comfyui", "scripts/fetch_comfyui.py").installed_version(str(root))
    served = " (DEADIFF_FRONT_END_ROOT)" if os.environ.get("DEADIFF_FRONT_END_ROOT") else ""
    return [f"ComfyUI {version} at {root}", f"front end: comfyui-frontend-package {front_end_version()}{served}"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """The real ComfyUI server in a subprocess; small JSON helpers over its HTTP API."""

    def __init__(self, root: Path, base: Path, extra_args=()):
        self.base = base
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "server.log"
        self._log = open(self.log_path, "wb")
        # started as a user starts it: ComfyUI's main.py with command-line options, nothing patched
        cmd = [
            sys.executable,
            "main.py",
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--base-directory",
            str(base),
            "--disable-auto-launch",
            "--dont-print-server",
            *front_end_args(),
            *extra_args,
        ]
        self.process = subprocess.Popen(
            cmd, cwd=root, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 180
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI server exited with {self.process.returncode}:\n{self.log()}")
            try:
                self.get("/system_stats")
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"ComfyUI server did not answer within 180 s:\n{self.log()}") from None
                time.sleep(0.5)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-20000:]

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=60) as r:
            return json.loads(r.read())

    def post(self, path: str, payload: dict):
        req = urllib.request.Request(
            self.url + path, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                body = r.read()
                return json.loads(body) if body else None
        except urllib.error.HTTPError as e:
            raise GraphError(f"POST {path} -> {e.code}: {e.read().decode(errors='replace')}") from e

    def run(self, prompt: dict, timeout: float = 300) -> dict:
        """Queue `prompt` and wait for its history entry; raises GraphError on a failed run."""
        prompt_id = self.post("/prompt", {"prompt": prompt, "client_id": "deadiff-tests"})["prompt_id"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                entry = history[prompt_id]
                if entry["status"].get("status_str") != "success":
                    raise GraphError(f"prompt failed: {entry['status']}", entry)
                return entry
            time.sleep(0.2)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s:\n{self.log()}")

    def stop(self):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()

    # ---- additive helpers (reliability and soak tests): queue without waiting, any outcome, memory, uploads

    def queue(self, prompt: dict) -> str:
        """Queue `prompt`; return its prompt_id without waiting."""
        return self.post("/prompt", {"prompt": prompt, "client_id": "deadiff-tests"})["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 300) -> dict:
        """The history entry of `prompt_id` once it finished, whatever the outcome (success, error, interrupted)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            history = self.get(f"/history/{prompt_id}")
            if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
                return history[prompt_id]
            time.sleep(0.1)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s:\n{self.log()}")

    def resident_bytes(self) -> int:
        """The server process's resident memory (VmRSS of /proc/<pid>/status), in bytes."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for pid {self.process.pid}")

    def upload_image(self, name: str, png: bytes) -> str:
        """POST /upload/image (multipart, as the front end sends it) into input/; return the stored name."""
        boundary = uuid.uuid4().hex
        body = (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                f"Content-Type: image/png\r\n\r\n"
            ).encode()
            + png
            + (
                f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="overwrite"\r\n\r\ntrue\r\n'
                f"--{boundary}--\r\n"
            ).encode()
        )
        req = urllib.request.Request(
            self.url + "/upload/image", data=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
        )
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read())["name"]


def execution_error(entry: dict) -> dict | None:
    """The `execution_error` message of a history entry (exception_type, exception_message, node_type), or None."""
    for event, data in entry.get("status", {}).get("messages", []):
        if event == "execution_error":
            return data
    return None


def start_server(prefix: str = "deadiff-extra-", extra_args=()) -> ComfyServer:
    """Another real server with its own base directory (stop it with `stop_server`)."""
    base = make_base_directory(prefix)
    try:
        return ComfyServer(comfyui_dir(), base, extra_args)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise


def stop_server(server: ComfyServer) -> None:
    server.stop()
    shutil.rmtree(server.base, ignore_errors=True)


@pytest.fixture(scope="session")
def comfy_server():
    server = start_server("deadiff-server-")
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture(autouse=True)
def _quiet_comfy_logs(caplog):
    caplog.set_level(logging.WARNING)
    yield
