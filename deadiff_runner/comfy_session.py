"""ComfyUI booted in this process, the way its main.py (and this pack's test harness) boots it.

Order matters and follows main.py: command-line args are set before anything imports
`comfy.model_management` or `folder_paths`; `folder_paths` reads the base directory at import;
`utils.extra_config` is imported before `nodes` (which puts comfy/ first on sys.path);
extra_model_paths.yaml is applied; then `nodes.init_extra_nodes` loads comfy_extras and the custom
nodes (this pack among them) through ComfyUI's own loader.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Optional

from .comfy_executor import prompt_executor

PACK_ROOT = Path(__file__).resolve().parent.parent
PACK_FOLDER_NAME = "ComfyUI-DEADiff"
# Test-only hook (see deadiff_runner.cli): a folder of test nodes to load next to the pack.
TEST_PACK_ENV = "DEADIFF_RUNNER_TEST_PACK"


class BootError(RuntimeError):
    """ComfyUI or the pack could not be started; the message says what to do."""


def is_comfyui_dir(path: Path) -> bool:
    return (path / "comfyui_version.py").is_file() and (path / "nodes.py").is_file()


def enclosing_comfyui() -> Optional[Path]:
    """The ComfyUI whose custom_nodes holds this pack, if it sits in one."""
    parent = PACK_ROOT.parent
    if parent.name == "custom_nodes" and is_comfyui_dir(parent.parent):
        return parent.parent
    return None


def find_comfyui(explicit: Optional[str]) -> Path:
    """--comfyui-dir, else $COMFYUI_DIR, else the ComfyUI this pack is installed in."""
    candidates = [("--comfyui-dir", explicit), ("COMFYUI_DIR", os.environ.get("COMFYUI_DIR"))]
    for source, value in candidates:
        if value:
            path = Path(value).expanduser().resolve()
            if not is_comfyui_dir(path):
                raise BootError(f"{source}={path} is not a ComfyUI folder (it has no comfyui_version.py and nodes.py)")
            return path
    found = enclosing_comfyui()
    if found is not None:
        return found
    raise BootError(
        "No ComfyUI found: pass --comfyui-dir /path/to/ComfyUI, set COMFYUI_DIR, or use "
        "scripts/run.sh, which fetches the pinned ComfyUI 0.3.75 into its cache."
    )


def accelerator_available() -> bool:
    import torch

    if torch.cuda.is_available():
        return True
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available())


class _BufferHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list = []

    def emit(self, record):
        self.records.append(record)


class _Sink:
    """Stands where ComfyUI's PromptServer receives executor messages; reports progress."""

    def __init__(self, reporter):
        self.client_id = None
        self.last_node_id = None
        self.sockets_metadata = {}
        self.reporter = reporter
        self.outputs: dict = {}

    def send_sync(self, event, data, sid=None):
        if event == "executing" and isinstance(data, dict) and data.get("node") is not None:
            self.reporter.node_started(str(data["node"]))
        elif event == "executed" and isinstance(data, dict):
            self.outputs[str(data.get("node"))] = data.get("output") or {}


class Session:
    """One in-process ComfyUI."""

    def __init__(
        self,
        comfyui_dir: Path,
        base_directory: Optional[Path] = None,
        models_dir: Optional[Path] = None,
        cpu: Optional[bool] = None,
        only_deadiff_nodes: bool = False,
        log_level: int = logging.WARNING,
    ):
        self.comfyui_dir = comfyui_dir
        self._temp_dirs: list[str] = []
        self.pack_source = None

        logging.basicConfig(level=log_level, format="%(message)s", stream=sys.stderr)
        logging.getLogger().setLevel(log_level)
        if str(comfyui_dir) in sys.path:
            sys.path.remove(str(comfyui_dir))
        sys.path.insert(0, str(comfyui_dir))
        for name in ("nodes", "utils", "comfy", "folder_paths", "execution"):
            module = sys.modules.get(name)
            origin = getattr(module, "__file__", None) or ""
            if module is not None and not os.path.realpath(origin).startswith(str(comfyui_dir)):
                raise BootError(
                    f"a module named {name!r} from {origin} was imported before ComfyUI; run the "
                    "runner in a fresh Python process (python -m deadiff_runner.cli)"
                )
        self.cpu = (not accelerator_available()) if cpu is None else cpu

        import comfy.options

        comfy.options.enable_args_parsing(False)
        from comfy.cli_args import args

        args.cpu = self.cpu
        args.disable_auto_launch = True
        if base_directory is not None:
            args.base_directory = str(base_directory)
        import folder_paths
        import utils.extra_config

        self.folder_paths = folder_paths
        self.base_directory = Path(folder_paths.base_path)
        yaml_path = comfyui_dir / "extra_model_paths.yaml"
        if yaml_path.is_file():
            utils.extra_config.load_extra_path_config(str(yaml_path))
        if models_dir is not None:
            self._use_models_dir(Path(models_dir).resolve())
        self._add_pack_to_custom_nodes(only_deadiff_nodes, args)

        # ComfyUI prints or logs every optional extra it cannot import (e.g. audio nodes without
        # torchaudio), with tracebacks; keep that out of a normal run (stdout is for the result), but
        # show what concerns this pack if it failed to load.
        buffer = _BufferHandler() if log_level > logging.INFO else None
        root = logging.getLogger()
        saved_handlers = root.handlers[:]
        printed = io.StringIO()
        if buffer is not None:
            root.handlers = [buffer]
        try:
            with contextlib.redirect_stdout(printed if buffer is not None else sys.stderr):
                import comfy.utils
                import execution
                import nodes

                asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
        finally:
            root.handlers = saved_handlers
        self.nodes = nodes
        self.execution = execution
        self.comfy_utils = comfy.utils
        if "DEADiffApply" not in nodes.NODE_CLASS_MAPPINGS:
            if buffer is not None:
                for text in [r.getMessage() for r in buffer.records] + printed.getvalue().splitlines():
                    if "deadiff" in text.lower() or str(self.pack_source) in text:
                        print(text, file=sys.stderr)
            raise BootError(
                f"ComfyUI did not load the DEADiff nodes from {self.pack_source}; the log above "
                "says why (usually a missing requirement: pip install -r requirements.txt)."
            )

    # ---------------------------------------------------------------------------------------------
    def _use_models_dir(self, models_dir: Path) -> None:
        """Every model folder also (and first) looked up under `models_dir`, like ComfyUI's own models/."""
        folder_paths = self.folder_paths
        if not models_dir.is_dir():
            raise BootError(f"--models-dir {models_dir} is not a folder")
        old = os.path.realpath(folder_paths.models_dir)
        for name, (paths, _extensions) in list(folder_paths.folder_names_and_paths.items()):
            for path in reversed([p for p in paths if os.path.realpath(p).startswith(old + os.sep)]):
                relative = os.path.relpath(os.path.realpath(path), old)
                folder_paths.add_model_folder_path(name, str(models_dir / relative), is_default=True)
        folder_paths.models_dir = str(models_dir)  # the pack registers models/deadiff from here

    def _add_pack_to_custom_nodes(self, only_deadiff_nodes: bool, args) -> None:
        """Load this pack from where it is installed, or link it into a temporary custom_nodes."""
        folder_paths = self.folder_paths
        installed = None
        paths = folder_paths.folder_names_and_paths["custom_nodes"][0]
        paths[:] = [
            p for p in paths if os.path.isdir(p)
        ]  # ComfyUI's loader lists each one; a base folder may have none
        for folder in folder_paths.get_folder_paths("custom_nodes"):
            if not os.path.isdir(folder):
                continue
            for entry in sorted(os.listdir(folder)):
                path = os.path.join(folder, entry)
                if os.path.realpath(path) == str(PACK_ROOT) or (
                    "deadiff" in entry.lower() and os.path.isfile(os.path.join(path, "nodes", "apply.py"))
                ):
                    installed = Path(path)
                    break
            if installed:
                break
        extra = {}
        if installed is None:
            extra[PACK_FOLDER_NAME] = PACK_ROOT
        test_pack = os.environ.get(TEST_PACK_ENV)
        if test_pack:
            extra["deadiff_runner_test_pack"] = Path(test_pack).resolve()
        if extra:
            folder = tempfile.mkdtemp(prefix="deadiff-runner-nodes-")
            self._temp_dirs.append(folder)
            for name, target in extra.items():
                try:
                    os.symlink(target, os.path.join(folder, name), target_is_directory=True)
                except OSError as e:
                    raise BootError(
                        f"could not link {target} into a temporary custom_nodes folder ({e}); "
                        f"put the pack in your ComfyUI's custom_nodes instead"
                    ) from e
            folder_paths.add_model_folder_path("custom_nodes", folder)
        self.pack_source = installed or PACK_ROOT
        if only_deadiff_nodes:
            args.disable_all_custom_nodes = True
            args.whitelist_custom_nodes = [
                (installed.name if installed else PACK_FOLDER_NAME),
                "deadiff_runner_test_pack",
            ]

    # ---------------------------------------------------------------------------------------------
    def node_info(self):
        from .workflow_api import comfy_node_info

        return comfy_node_info(self.nodes)

    def validate(self, prompt: dict):
        return asyncio.run(self.execution.validate_prompt(str(uuid.uuid4()), prompt, None))

    def run(self, prompt: dict, workflow: Optional[dict], reporter, extra_pnginfo: Optional[dict] = None) -> dict:
        """Validate and execute `prompt`; output nodes save to ComfyUI's output folder, as in the UI (so a
        style that Save Tokens writes is there for a later Load Style). `extra_pnginfo` adds text chunks to
        the PNG (next to "workflow"), as the front end's extra_pnginfo does.

        One executor serves every run of the session, as in ComfyUI's server: its cache keeps the outputs
        of nodes whose inputs did not change (the loaded checkpoint and DEADiff model) for the next job.

        Returns {node id: the node's UI output}. Raises RunError with ComfyUI's own messages."""
        valid = self.validate(prompt)
        if not valid[0]:
            raise RunError(format_validation_error(valid[1], valid[3], prompt))
        sink = _Sink(reporter)
        self.comfy_utils.set_progress_bar_enabled(False)  # one bar per node from our hook instead
        self.comfy_utils.set_progress_bar_global_hook(reporter.step)
        executor = getattr(self, "_executor", None)
        if executor is None:  # one executor for the session: its cache serves the loaders to later jobs
            executor = prompt_executor(sink)  # configured as this ComfyUI's main.py configures its own
            self._executor = executor
        executor.server = sink
        extra_data = {"client_id": "deadiff-runner"}
        if workflow is not None or extra_pnginfo:
            extra_data["extra_pnginfo"] = {
                **({"workflow": workflow} if workflow is not None else {}),
                **(extra_pnginfo or {}),
            }
        reporter.start(prompt, valid[2])
        try:
            executor.execute(prompt, str(uuid.uuid4()), extra_data=extra_data, execute_outputs=valid[2])
        finally:
            reporter.finish()
            self.comfy_utils.set_progress_bar_global_hook(None)
        errors = [data for event, data in executor.status_messages if event == "execution_error"]
        if errors or not executor.success:
            err = errors[0] if errors else {}
            node = prompt.get(str(err.get("node_id")), {})
            title = node.get("_meta", {}).get("title", err.get("node_type"))
            kind = str(err.get("exception_type") or "").rsplit(".", 1)[-1]  # not the module path it was loaded from
            message = str(err.get("exception_message") or "").strip()
            raise RunError(
                f"node {err.get('node_id')} ({title}) failed: "
                + (message if kind in FILE_ERRORS else f"{kind}: {message}"),
                traceback="".join(err.get("traceback") or []),
                kind=kind,
            )
        return sink.outputs

    def close(self) -> None:
        for folder in self._temp_dirs:
            shutil.rmtree(folder, ignore_errors=True)


# the pack's errors about a DEADiff file, whose message says everything (no class name needed)
FILE_ERRORS = ("DEADiffCheckpointError", "DEADiffUnsafeFileError")


class RunError(RuntimeError):
    def __init__(self, message: str, traceback: str = "", kind: str = ""):
        super().__init__(message)
        self.traceback = traceback
        self.kind = kind  # the exception's class name when a node failed


def format_validation_error(error: dict, node_errors: dict, prompt: dict) -> str:
    lines = [
        f"ComfyUI refused the workflow: {error.get('message', error)}"
        + (f" ({error['details']})" if error.get("details") else "")
    ]
    for node_id, info in (node_errors or {}).items():
        title = prompt.get(str(node_id), {}).get("_meta", {}).get("title", info.get("class_type"))
        for item in info.get("errors", []):
            lines.append(f"  node {node_id} ({title}): {item.get('message')}: {item.get('details')}")
    return "\n".join(lines)
