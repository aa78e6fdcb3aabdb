"""The checks made before ComfyUI boots: the jobs built from the arguments, their images read, and every
edit applied to the workflow against the node definitions kept with the runner (known_nodes.json).

A wrong argument or a missing image is then reported in seconds instead of after a ComfyUI boot.
"""

from __future__ import annotations

import copy
from pathlib import Path

from . import jobs as jobs_mod
from . import known_nodes
from . import workflows as wf
from .job_edits import prepare
from .jobs import Job
from .workflow_api import WorkflowError


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


def analyse_workflow(workflow: dict, node_info) -> wf.GraphRoles:
    editor = wf.Editor(copy.deepcopy(workflow), node_info)
    return wf.analyse(editor.api(), node_info)


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
