"""deadiff-run: run a DEADiff example workflow headless, through ComfyUI in this process or on servers.

    bash scripts/run.sh --style ref.png --prompt "a lighthouse at dusk" --output out.png
    bash scripts/run.sh --download --convert --style ref.png --prompt "a lighthouse at dusk"
    bash scripts/run.sh --style a.png --style b.png --prompt "a cat" --prompt "a dog" --seed 1 --seed 2
    bash scripts/run.sh --jobs grid.json --server http://gpu1:8188 --server http://gpu2:8188
    python -m deadiff_runner.cli --check

The workflow is one of example_workflows/ (default: deadiff_style_transfer) or any UI workflow file
saved from ComfyUI. It is converted with the running ComfyUI's own node definitions, validated by
ComfyUI and executed by ComfyUI's executor; the PNG is written by ComfyUI's Save Image node, with the
API prompt and the (edited) workflow embedded as the "prompt" and "workflow" text chunks, so the
picture opens in ComfyUI as the workflow that made it. The picture is moved from ComfyUI's output
folder to --output; anything else the workflow saves (a style saved by DEADiff Save Tokens) stays in
ComfyUI's output folder, as in the UI, where DEADiff Load Style finds it.

A batch (several prompts, references or seeds, or a jobs file; see deadiff_runner.jobs) runs in one
ComfyUI session: one boot, and ComfyUI's own cache keeps the loaded models between the jobs. With
--server the same jobs are queued on running ComfyUI servers through their HTTP API
(deadiff_runner.remote), spread over the servers given.

Every argument that can be checked without ComfyUI is checked before it boots (the node definitions
the examples use are kept in known_nodes.json for that); errors are one line, without a traceback
unless -v. Exit status: 0 done; 1 ComfyUI refused or failed a job, or a download failed; 2 something
is missing (a weight file, an input image, ComfyUI itself) or an argument is wrong.

Test-only hook: with DEADIFF_RUNNER_TEST_PACK=/path/to/tests/comfy_test_pack in the environment the
runner also loads that test node pack and replaces every CheckpointLoaderSimple by its tiny random
SD1.5 (DEADiffTest_TinySD15) and every ControlNetLoader by DEADiffTest_TinyControlNet, because a
real SD1.5 file cannot exist in the test suite. It says so on stderr; never set it otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from . import jobs as jobs_mod
from . import known_nodes
from . import models_home
from . import workflows as wf
from .comfy_session import TEST_PACK_ENV, BootError, RunError, Session, enclosing_comfyui, find_comfyui
from .file_kinds import KINDS, describe, find_by_name, kind_of, misplaced
from .jobs import Job, JobsError
from .progress import BatchReporter, ProgressReporter
from .workflow_api import WorkflowError

EXIT_FAILED = 1
EXIT_MISSING = 2
EXIT_USAGE = 2
TEST_SUBSTITUTES = {"CheckpointLoaderSimple": "DEADiffTest_TinySD15", "ControlNetLoader": "DEADiffTest_TinyControlNet"}
# the folder a loader's file belongs in -> the kind of file expected there (file_kinds)
EXPECTED_KIND = {"deadiff": "deadiff", "checkpoints": "sd"}
COMPACT_SUFFIX = "_compact.safetensors"


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


def fail(message: str, code: int) -> int:
    print(f"deadiff-run: {message}", file=sys.stderr)
    return code


def say(message: str) -> None:
    print(f"deadiff-run: {message}", file=sys.stderr, flush=True)


def list_examples() -> int:
    for name in wf.example_names():
        workflow = wf.load_workflow(wf.EXAMPLES_DIR / f"{name}.json")
        note = next((n for n in workflow["nodes"] if n.get("type") == "Note"), None)
        first = note["widgets_values"][0].split("\n")[0] if note and note.get("widgets_values") else ""
        print(f"{name:28s} {first}")
    return 0


# ------------------------------------------------------------------------------------------ checks before booting


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


def check_images(jobs: list[Job]) -> None:
    """Every reference image exists and is an image (read only its header)."""
    from PIL import Image, UnidentifiedImageError

    seen = set()
    for job in jobs:
        for role in jobs_mod.IMAGE_ROLES:
            for path in getattr(job, role):
                path = Path(path).expanduser()
                if path in seen:
                    continue
                seen.add(path)
                if not path.is_file():
                    raise FileNotFoundError(f"--{role} {path}: no such file")
                try:
                    with Image.open(path) as image:
                        image.verify()
                except (UnidentifiedImageError, OSError) as e:
                    raise FileNotFoundError(f"--{role} {path}: not an image ComfyUI can read ({e})") from e


def image_slots(roles: wf.GraphRoles) -> dict:
    return {role: len(roles.images.get(role, [])) for role in jobs_mod.IMAGE_ROLES}


def make_jobs(args, roles: wf.GraphRoles) -> list[Job]:
    slots = image_slots(roles)
    if args.jobs:
        jobs = jobs_mod.from_file(Path(args.jobs).expanduser(), args, slots)
    else:
        jobs = jobs_mod.from_command_line(args, slots)
    check_images(jobs)
    return jobs


class Prepared:
    """One job's workflow with its edits applied."""

    def __init__(self, job: Job, editor: wf.Editor, assigned: dict):
        self.job = job
        self.editor = editor
        self.assigned = assigned

    def prompt(self) -> dict:
        return self.editor.api()


def analyse_workflow(workflow: dict, node_info) -> wf.GraphRoles:
    editor = wf.Editor(copy.deepcopy(workflow), node_info)
    return wf.analyse(editor.api(), node_info)


def prepare(workflow: dict, node_info, roles: wf.GraphRoles, job: Job) -> Prepared:
    editor = wf.Editor(copy.deepcopy(workflow), node_info)
    assigned = assign_images(editor, roles, job)
    apply_edits(editor, roles, job)
    editor.api()  # a conversion error now rather than later
    return Prepared(job, editor, assigned)


def preflight(args, workflow: dict):
    """Roles and jobs checked against the node definitions kept with the runner, before ComfyUI boots;
    (None, None) when the workflow uses a node type they do not cover (then the live check does it all)."""
    try:
        roles = analyse_workflow(workflow, known_nodes.node_info)
    except WorkflowError:
        return None, None
    jobs = make_jobs(args, roles)
    for job in jobs:
        prepare(workflow, known_nodes.node_info, roles, job)
    return roles, jobs


# ------------------------------------------------------------------------------------------- editing one job


def assign_images(editor: wf.Editor, roles: wf.GraphRoles, job) -> dict:
    """node id -> (role, user path) for every LoadImage the job sets (named by the file's name for now;
    `upload_images` puts the files into ComfyUI's input folder once the run goes ahead)."""
    assigned: dict = {}
    for role in wf.IMAGE_ROLES:
        given = getattr(job, role)
        loaders = roles.images.get(role, [])
        if not given:
            continue
        if not loaders:
            raise WorkflowError(
                f"--{role} given, but this workflow has no {role} image (a Load Image node feeding "
                f"{'a DEADiff ' + role.capitalize() + ' Encoder' if role != 'control' else 'a ControlNet'})"
            )
        if len(given) != len(loaders):
            listed = ", ".join(f"{n} ({editor.title(n)})" for n in loaders)
            raise WorkflowError(
                f"this workflow has {len(loaders)} {role} image(s), nodes {listed}: give --{role} "
                f"{len(loaders)} time(s), in that order"
            )
        for node_id, path in zip(loaders, given):
            path = Path(path).expanduser().resolve()
            if node_id in assigned and assigned[node_id][1] != path:
                raise WorkflowError(
                    f"node {node_id} ({editor.title(node_id)}) is the {assigned[node_id][0]} and the "
                    f"{role} image at once; give the same file to both options"
                )
            assigned[node_id] = (role, path)
    for node_id, (_role, path) in assigned.items():
        editor.set(node_id, "image", path.name)
    return assigned


def apply_edits(editor: wf.Editor, roles: wf.GraphRoles, job) -> None:
    for option, targets in (("prompt", roles.positive), ("negative", roles.negative)):
        text = getattr(job, option)
        if text is None:
            continue
        if not targets:
            raise WorkflowError(
                f"--{option}: found no text node feeding the sampler's "
                f"{option if option == 'negative' else 'positive'} input"
            )
        other = roles.negative if option == "prompt" else roles.positive
        shared = targets & other
        if shared:
            raise WorkflowError(f"--{option}: node {sorted(shared)[0]} feeds both the positive and the negative input")
        for node_id in targets:
            editor.set(node_id, "text", text)
    for option, names in (("seed", ("seed", "noise_seed")), ("steps", ("steps",)), ("cfg", ("cfg",))):
        value = getattr(job, option)
        if value is None:
            continue
        if not roles.samplers:
            raise WorkflowError(f"--{option}: this workflow has no KSampler-like node")
        for node_id in roles.samplers:
            kinds = {w for w in editor.api()[node_id]["inputs"]}
            for name in names:
                if name in kinds:
                    try:
                        editor.set(node_id, name, value)
                    except WorkflowError as e:
                        raise WorkflowError(f"--{option} {value}: {e}") from None
    for option in ("width", "height"):
        value = getattr(job, option)
        if value is None:
            continue
        if value % 8:
            raise WorkflowError(f"--{option} {value}: use a multiple of 8")
        if not roles.latents:
            raise WorkflowError(f"--{option}: this workflow has no Empty Latent Image node")
        for node_id in roles.latents:
            try:
                editor.set(node_id, option, value)
            except WorkflowError as e:
                raise WorkflowError(f"--{option} {value}: {e}") from None
    for spec in job.overrides:
        editor.apply_override(spec)


def copy_into_input(input_dir: Path, source: Path) -> str:
    """Put a user image into ComfyUI's input folder (as an upload in the UI does); return its name."""
    input_dir.mkdir(parents=True, exist_ok=True)
    data = source.read_bytes()
    target = input_dir / source.name
    if target.exists() and target.read_bytes() != data:
        target = input_dir / f"{source.stem}_{hashlib.sha256(data).hexdigest()[:8]}{source.suffix}"
    if not target.exists():
        shutil.copyfile(source, target)
    return target.name


def upload_images(prepared: Prepared, input_dir: Path) -> None:
    for node_id, (_role, path) in prepared.assigned.items():
        prepared.editor.set(node_id, "image", copy_into_input(input_dir, path))


def substitute_test_models(prompt: dict) -> dict:
    for node in prompt.values():
        if node["class_type"] in TEST_SUBSTITUTES:
            node["class_type"] = TEST_SUBSTITUTES[node["class_type"]]
            node["inputs"] = {"seed": 0}
    return prompt


def job_label(job: Job, total: int) -> str:
    parts = [f"job {job.index}/{total}"]
    if job.prompt:
        parts.append(repr(job.prompt if len(job.prompt) <= 30 else job.prompt[:27] + "..."))
    if job.style:
        parts.append("style " + "+".join(Path(p).name for p in job.style))
    if job.seed is not None:
        parts.append(f"seed {job.seed}")
    return " ".join(parts)


# ------------------------------------------------------------------------------------------ what is installed


def missing_report(
    workflow_name: str,
    missing: list,
    folder_paths,
    missing_images: list,
    missing_tokens: list = (),
    hints: dict = None,
    download_hint: bool = False,
) -> str:
    hints = hints or {}
    lines = [f"{workflow_name} needs files that are not installed (nothing was loaded):", ""]
    for req in missing:
        lines.append(f"  {req.filename}  (node {req.node_id}, {req.title})")
        lines.append(f"    put it in:   {wf.folder_for(folder_paths, req.folder)}{os.sep}")
        if req.source:
            lines.append(f"    get it from: {req.source}")
        for hint in hints.get((req.folder, req.filename), []):
            lines.append(f"    note: {hint}")
        if req.folder != "deadiff":
            lines.append(f"    or use a file you have: --set {req.node_id}.{req.input_name}=NAME")
        lines.append("")
    for node_id, title, name, role in missing_images:
        lines.append(
            f"  input image {name!r} (node {node_id}, {title}) is not in "
            f"{folder_paths.get_input_directory()}: pass --{role} IMAGE"
        )
        lines.append("")
    for tokens in missing_tokens:
        lines.append(
            f"  saved tokens {tokens.value!r} (node {tokens.node_id}, {tokens.title}) are not in {tokens.folder}"
        )
        lines.append(
            "    save them first with a workflow that has DEADiff Save Tokens (deadiff_saved_style writes "
            "output/deadiff/my_style_00001_.safetensors),"
        )
        lines.append(
            f"    or put a shared file in {Path(folder_paths.get_input_directory()) / wf.TOKENS_SUBFOLDER}"
            f"{os.sep} and pick it: --set {tokens.node_id}.tokens_file=NAME"
        )
        lines.append("")
    if missing:
        if download_hint:
            lines.append("Download them with --download (add --convert for the compact DEADiff file).")
        lines.append(
            "Models somewhere else? --models-dir /path/to/ComfyUI/models, or --base-directory /path/to/ComfyUI."
        )
    return "\n".join(lines)


def misplaced_hints(missing: list, folder_paths) -> dict:
    """(folder, filename) -> notes: a file of another kind where this one belongs, or this file elsewhere."""
    hints: dict = {}
    models_root = Path(folder_paths.models_dir)
    for req in missing:
        notes = []
        expected = EXPECTED_KIND.get(req.folder)
        folders = (
            [Path(p) for p in folder_paths.get_folder_paths(req.folder)]
            if req.folder in folder_paths.folder_names_and_paths
            else []
        )
        if expected:
            for folder in folders:
                for path, kind in misplaced(folder, expected):
                    notes.append(
                        describe(path, kind) + f", not in {req.folder}/ (Load DEADiff Model lists it but cannot use it)"
                        if req.folder == "deadiff"
                        else describe(path, kind)
                    )
        for folder in folders[:1]:
            for path in find_by_name(models_root, req.filename, folder):
                notes.append(f"{path} has this name but sits in {path.parent.name}/: move it to {folder}{os.sep}")
        if notes:
            hints[(req.folder, req.filename)] = notes
    return hints


def wrong_kind_errors(requirements: list) -> list[str]:
    """A file that is found but is plainly not what its loader needs (an SD checkpoint chosen as the DEADiff file)."""
    errors = []
    for req in requirements:
        expected = EXPECTED_KIND.get(req.folder)
        if req.path is None or expected is None:
            continue
        kind = kind_of(req.path)
        if kind is not None and kind != expected:
            what, belongs = KINDS[kind]
            errors.append(
                f"node {req.node_id} ({req.title}) is set to {req.filename}, which is {what} ({req.path}): "
                f"it belongs in models/{belongs}. "
                + (
                    "Choose deadiff_v1.ckpt (Hugging Face qth/DEADiff) or its compact conversion"
                    if req.folder == "deadiff"
                    else "Choose an SD1.5 checkpoint"
                )
            )
    return errors


def requirements_of(prepared: list[Prepared], folder_paths, skip) -> list:
    seen, found = set(), []
    for item in prepared:
        for req in wf.model_requirements(item.prompt(), folder_paths, skip_types=skip):
            key = (req.node_id, req.folder, req.filename)
            if key not in seen:
                seen.add(key)
                found.append(req)
    return found


def use_compact(prepared: list[Prepared], requirements: list, folder_paths, convert: bool) -> list[str]:
    """Point Load DEADiff Model at the compact conversion of its .ckpt: made now with --convert, or already
    there when the .ckpt itself is gone. Returns what was done, for the log."""
    notes = []
    for req in requirements:
        if req.folder != "deadiff" or not req.filename.lower().endswith(".ckpt"):
            continue
        stem = req.filename[: -len(".ckpt")]
        compact_name = stem + COMPACT_SUFFIX
        compact_path = folder_paths.get_full_path("deadiff", compact_name)
        if req.path is not None and convert and compact_path is None:
            from deadiff_core.convert import convert as convert_file

            target = Path(req.path).with_name(Path(compact_name).name)
            say(f"converting {req.path} -> {target} (once; later runs load the compact file)")
            convert_file(str(req.path), str(target))
            compact_path = str(target)
        if compact_path is None or (req.path is not None and not convert):
            continue
        for item in prepared:
            if req.node_id in item.editor.ui_nodes:
                item.editor.set(req.node_id, req.input_name, compact_name)
        notes.append(
            f"node {req.node_id} ({req.title}) uses {compact_path}"
            + ("" if req.path else f" (the compact conversion of {req.filename}, which is not there)")
        )
    return notes


def download_missing(missing: list, folder_paths) -> list[str]:
    from deadiff_core import download as dl

    done = []
    for req in missing:
        known = dl.KNOWN_FILES.get(req.filename)
        if known is None or known.folder != req.folder:
            continue
        folder = Path(wf.folder_for(folder_paths, req.folder))
        path = dl.download(known, folder, log=say)
        done.append(str(path))
    return done


def print_check(
    session, home, workflow_path, requirements, roles, prompt, assigned, missing_images, editor, tokens=()
) -> None:
    version = "?"
    version_file = session.comfyui_dir / "comfyui_version.py"
    for line in version_file.read_text().splitlines():
        if line.startswith("__version__"):
            version = line.split("=", 1)[1].strip().strip("\"'")
    import comfy.model_management as mm

    print(f"ComfyUI        {session.comfyui_dir} ({version})")
    print(f"base folder    {session.base_directory}")
    print(f"models folder  {home.path}")
    print(f"               ({home.reason})")
    print(f"device         {mm.get_torch_device()}")
    print(f"DEADiff pack   {session.pack_source}")
    print(f"workflow       {workflow_path}")
    for req in requirements:
        state = "ok     " if req.path else "MISSING"
        where = req.path or f"-> {wf.folder_for(session.folder_paths, req.folder)}{os.sep}"
        print(f"  {state}  {req.folder}/{req.filename}  {where}")
    missing = {m[0] for m in missing_images}
    for role in wf.IMAGE_ROLES:
        for node_id in roles.images.get(role, []):
            name = prompt[node_id]["inputs"].get("image")
            if node_id in assigned:
                print(f"  ok       {role} image ({editor.title(node_id)})  {assigned[node_id][1]}")
            else:
                state = "MISSING" if node_id in missing else "ok     "
                print(f"  {state}  {role} image ({editor.title(node_id)})  input/{name}")
    for item in tokens:
        state = "ok     " if item.path.is_file() else "MISSING"
        print(f"  {state}  saved tokens ({item.title})  {item.path}")


def saved_tokens(outputs: dict) -> list[dict]:
    """What DEADiff Save Tokens nodes reported writing."""
    return [
        item
        for node_id in sorted(outputs, key=wf.numeric_order)
        for item in outputs[node_id].get("deadiff_tokens", []) or []
        if item.get("type") == "output"
    ]


def collect_outputs(outputs: dict, output_dir: Path) -> list[Path]:
    files = []
    for node_id in sorted(outputs, key=wf.numeric_order):
        for item in outputs[node_id].get("images", []) or []:
            if item.get("type") != "output":
                continue
            files.append(output_dir / item.get("subfolder", "") / item["filename"])
    return files


def numbered(output: Path, index: int) -> Path:
    """The index-th picture of one job (1-based): PATH, then PATH-2.png, PATH-3.png, ..."""
    return output if index == 0 else output.with_name(f"{output.stem}-{index + 1}{output.suffix}")


class _ExecutorErrorFilter(logging.Filter):
    """ComfyUI's executor logs a failed node's traceback; the runner prints its own one-line message."""

    def filter(self, record):
        return not (record.levelno >= logging.ERROR and os.path.basename(record.pathname) == "execution.py")


# ----------------------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        return list_examples()
    try:
        return _main(args)
    except (UsageError, WorkflowError, JobsError, FileNotFoundError, BootError) as e:
        return fail(str(e), EXIT_USAGE)
    except KeyboardInterrupt:
        return fail("interrupted", 130)
    except Exception as e:  # noqa: BLE001 - one line unless -v
        from deadiff_core.download import DownloadError

        if isinstance(e, DownloadError):
            return fail(str(e), EXIT_FAILED)
        if args.verbose:
            raise
        return fail(f"{type(e).__name__}: {e} (run with -v for the traceback)", EXIT_FAILED)


def _main(args) -> int:
    check_options(args)
    workflow_path = wf.find_workflow(args.workflow)
    workflow = wf.load_workflow(workflow_path)
    roles, jobs = preflight(args, workflow)
    if jobs is not None and not args.check:
        jobs_mod.assign_outputs(jobs, args.output, workflow_path.stem, Path.cwd())
    if args.server:
        from . import remote

        return remote.main(args, workflow_path, workflow, jobs)

    comfyui_dir = find_comfyui(args.comfyui_dir)
    home = models_home.resolve(
        args.models_dir,
        args.base_directory,
        comfyui_dir,
        enclosing_comfyui(),
        "--comfyui-dir" if args.comfyui_dir else "COMFYUI_DIR",
    )
    if home.extra and not args.models_dir:
        home.path.mkdir(parents=True, exist_ok=True)  # the stable default: made once, used from then on
    if args.models_dir and not home.path.is_dir():
        raise UsageError(f"--models-dir {home.path} is not a folder")
    level = logging.INFO if args.verbose else (logging.ERROR if args.quiet else logging.WARNING)
    started = time.monotonic()
    session = Session(
        comfyui_dir,
        base_directory=Path(args.base_directory).expanduser().resolve() if args.base_directory else None,
        models_dir=home.path if home.extra else None,
        cpu=True if args.cpu else None,
        only_deadiff_nodes=args.only_deadiff_nodes,
        log_level=level,
    )
    boot_seconds = time.monotonic() - started
    if not args.verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_ExecutorErrorFilter())
    try:
        return _run(args, session, home, workflow_path, workflow, jobs, boot_seconds)
    finally:
        session.close()


def _run(args, session: Session, home, workflow_path: Path, workflow: dict, jobs, boot_seconds: float) -> int:
    folder_paths = session.folder_paths
    node_info = session.node_info()
    try:
        roles = analyse_workflow(workflow, node_info)
        if jobs is None:
            jobs = make_jobs(args, roles)
            if not args.check:
                jobs_mod.assign_outputs(jobs, args.output, workflow_path.stem, Path.cwd())
        prepared = [prepare(workflow, node_info, roles, job) for job in jobs]
    except (WorkflowError, JobsError, FileNotFoundError) as e:
        return fail(str(e), EXIT_USAGE)

    test_hook = bool(os.environ.get(TEST_PACK_ENV))
    skip = ()
    if test_hook:
        skip = tuple(TEST_SUBSTITUTES)
        say(
            f"TEST HOOK {TEST_PACK_ENV} is set: {', '.join(f'{a} -> {b}' for a, b in TEST_SUBSTITUTES.items())} "
            "(tiny random test models)"
        )
    requirements = requirements_of(prepared, folder_paths, skip)
    missing = [r for r in requirements if r.path is None]
    if args.download and missing and not args.check:
        download_missing(missing, folder_paths)
        requirements = requirements_of(prepared, folder_paths, skip)
        missing = [r for r in requirements if r.path is None]
    if not args.check:
        try:
            for note in use_compact(prepared, requirements, folder_paths, args.convert):
                say(note)
        except Exception as e:  # noqa: BLE001 - a failed conversion: say why, in one line
            if args.verbose:
                raise
            return fail(f"converting to the compact file failed: {e}", EXIT_FAILED)
        requirements = requirements_of(prepared, folder_paths, skip)
        missing = [r for r in requirements if r.path is None]

    first = prepared[0]
    prompt = first.prompt()
    missing_images = []
    for item in prepared:
        item_prompt = item.prompt()
        for role in wf.IMAGE_ROLES:
            for node_id in roles.images.get(role, []):
                name = item_prompt[node_id]["inputs"].get("image")
                entry = (node_id, item.editor.title(node_id), name, role)
                if (
                    node_id not in item.assigned
                    and isinstance(name, str)
                    and entry not in missing_images
                    and not folder_paths.exists_annotated_filepath(name)
                ):
                    missing_images.append(entry)
    tokens = wf.token_files(prompt, folder_paths)
    missing_tokens = [t for t in tokens if not t.path.is_file()]
    hints = misplaced_hints(missing, folder_paths)
    wrong = wrong_kind_errors(requirements)

    if args.check:
        print_check(
            session,
            home,
            workflow_path,
            requirements,
            roles,
            prompt,
            first.assigned,
            missing_images,
            first.editor,
            tokens,
        )
        for line in wrong:
            print(f"  WRONG    {line}")
        if missing or missing_images or missing_tokens or wrong:
            if missing or missing_images or missing_tokens:
                print(
                    "\n"
                    + missing_report(
                        workflow_path.name,
                        missing,
                        folder_paths,
                        missing_images,
                        missing_tokens,
                        hints,
                        download_hint=True,
                    ),
                    file=sys.stderr,
                )
            return EXIT_MISSING
        print("\nEverything this workflow needs is installed.")
        return 0
    if missing or missing_images or missing_tokens:
        print(
            missing_report(
                workflow_path.name,
                missing,
                folder_paths,
                missing_images,
                missing_tokens,
                hints,
                download_hint=not args.download,
            ),
            file=sys.stderr,
        )
        return EXIT_MISSING
    if wrong:
        return fail(wrong[0], EXIT_MISSING)
    return run_jobs(args, session, workflow_path, prepared, test_hook, boot_seconds)


def run_jobs(
    args, session: Session, workflow_path: Path, prepared: list[Prepared], test_hook: bool, boot_seconds: float
) -> int:
    folder_paths = session.folder_paths
    input_dir = Path(folder_paths.get_input_directory())
    output_dir = Path(folder_paths.get_output_directory())
    batch = len(prepared) > 1
    reporter = BatchReporter(len(prepared), quiet=args.quiet) if batch else ProgressReporter(quiet=args.quiet)
    new_folders = set()
    written, failures, times = [], [], []
    moved: dict = {}
    try:
        for item in prepared:
            job = item.job
            upload_images(item, input_dir)
            prompt = item.prompt()
            if test_hook:
                substitute_test_models(prompt)
            new_folders.update(wf.new_output_folders(prompt, output_dir))
            if batch:
                reporter.job_started(job.index, job_label(job, len(prepared)))
            started = time.monotonic()
            try:
                outputs = session.run(
                    prompt, item.editor.workflow, reporter, extra_pnginfo={"deadiff_job": job.parameters()}
                )
            except RunError as e:
                if args.verbose and e.traceback:
                    print(e.traceback, file=sys.stderr)
                if not batch:
                    # a hostile file is a problem with what the user installed, like a missing one: exit 2
                    return fail(str(e), EXIT_MISSING if e.kind == "DEADiffUnsafeFileError" else EXIT_FAILED)
                failures.append((job, str(e)))
                reporter.job_finished(False, f"job {job.index}: {e}")
                continue
            for saved in saved_tokens(outputs):
                path = output_dir / saved.get("subfolder", "") / saved["filename"]
                listed = (
                    path.relative_to(output_dir / wf.TOKENS_SUBFOLDER).as_posix() + wf.OUTPUT_SUFFIX
                    if (output_dir / wf.TOKENS_SUBFOLDER) in path.parents
                    else None
                )
                say(
                    f"saved tokens {path}"
                    + (f" (DEADiff Load Style / Load Content list them as {listed!r})" if listed else "")
                )
            files = collect_outputs(outputs, output_dir)
            if not files:
                message = "the workflow saved no picture: it needs a Save Image node"
                if not batch:
                    return fail(message, EXIT_FAILED)
                failures.append((job, message))
                reporter.job_finished(False, message)
                continue
            job.output.parent.mkdir(parents=True, exist_ok=True)
            for index, source in enumerate(files):
                target = numbered(job.output, index)
                if not source.exists() and str(source) in moved:
                    # the same job twice: ComfyUI's cache re-reports the picture it already saved (and we moved)
                    shutil.copyfile(moved[str(source)], target)
                else:
                    shutil.move(str(source), target)
                    moved[str(source)] = target
                written.append(target)
            times.append(time.monotonic() - started)
            if batch:
                reporter.job_finished(True)
    finally:
        if batch:
            reporter.close()
        for folder in sorted(new_folders, key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: the pictures' folders this run created in ComfyUI's output
    for path in written:
        print(path)
    if batch:
        print(summary(len(prepared), times, failures, boot_seconds, reporter.reused()), file=sys.stderr)
    return EXIT_FAILED if failures else 0


def summary(total: int, times: list, failures: list, boot_seconds: float, reused=()) -> str:
    done = len(times)
    lines = [
        f"deadiff-run: {done} of {total} jobs done"
        + (f", {len(failures)} failed" if failures else "")
        + f"; ComfyUI boot {boot_seconds:.1f} s (once)"
    ]
    if reused:
        lines.append(f"  run once, then reused from ComfyUI's cache: {', '.join(reused)}")
    if times:
        rest = times[1:]
        lines.append(
            f"  first picture {times[0]:.1f} s (loads the models)"
            + (f", then {sum(rest) / len(rest):.1f} s per picture ({len(rest)} more)" if rest else "")
        )
        lines.append(
            f"  total {boot_seconds + sum(times):.1f} s, {(boot_seconds + sum(times)) / done:.1f} s per "
            "picture including the boot"
        )
    for job, message in failures:
        lines.append(f"  job {job.index} failed: {message}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
