"""One job's edits to a workflow: its reference images, prompt, seed, size and --set overrides put into a
copy of the workflow, and the images copied into ComfyUI's input folder once the run goes ahead.

Used the same way by the check before boot (against the node definitions kept with the runner), the local
run and the server run.
"""

from __future__ import annotations

import copy
import hashlib
import shutil
from pathlib import Path

from . import workflows as wf
from .jobs import Job
from .workflow_api import WorkflowError

TEST_SUBSTITUTES = {"CheckpointLoaderSimple": "DEADiffTest_TinySD15", "ControlNetLoader": "DEADiffTest_TinyControlNet"}


class Prepared:
    """One job's workflow with its edits applied."""

    def __init__(self, job: Job, editor: wf.Editor, assigned: dict):
        self.job = job
        self.editor = editor
        self.assigned = assigned

    def prompt(self) -> dict:
        return self.editor.api()


def prepare(workflow: dict, node_info, roles: wf.GraphRoles, job: Job) -> Prepared:
    editor = wf.Editor(copy.deepcopy(workflow), node_info)
    assigned = assign_images(editor, roles, job)
    apply_edits(editor, roles, job)
    editor.api()  # a conversion error now rather than later
    return Prepared(job, editor, assigned)


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
