"""What a workflow needs installed: the model files its loaders name, found or missing, of the right kind or
not, downloaded or converted on request, and the messages that say where each missing file goes.

deadiff-run answers a missing file with what to do about it (which folder, where to get it, a misplaced
file it found) instead of ComfyUI's bare "value not in list".
"""

from __future__ import annotations

import os
from pathlib import Path

from . import workflows as wf
from .console import say
from .file_kinds import KINDS, describe, find_by_name, kind_of, misplaced
from .job_edits import Prepared

# the folder a loader's file belongs in -> the kind of file expected there (file_kinds)
EXPECTED_KIND = {"deadiff": "deadiff", "checkpoints": "sd"}
COMPACT_SUFFIX = "_compact.safetensors"


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
