"""A batch: the pictures one command asks for, each a Job with its own prompt, references, seed, ...

From the command line, `--prompt`, `--seed` and the reference options are repeatable: the jobs are
every prompt x every style group x every content group x every control group x every seed, a group
being as many images as the workflow has references of that kind (one, in most examples; two in
style_mixing). From a jobs file (`--jobs FILE`):

- `.txt`: one prompt per line (empty lines and lines starting with # are skipped), crossed with the
  command line's references and seeds;
- `.csv`: a header row naming the columns (prompt, negative, style, content, control, seed, steps,
  cfg, width, height, set, output; several images or --set values in one cell separated by `|`), one
  job per row;
- `.json`: a list of job objects with those keys, or one object whose values are lists (a grid:
  every combination), e.g. {"prompt": ["a cat", "a dog"], "style": ["a.png", "b.png"], "seed": [1, 2]}.

Relative image and output paths in a jobs file are relative to the file's folder. What a job does
not say comes from the command line (`--steps 20 --jobs grid.json`). Nothing here imports ComfyUI.
"""

from __future__ import annotations

import csv
import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

IMAGE_ROLES = ("style", "content", "control")
SCALARS = {"prompt": str, "negative": str, "seed": int, "steps": int, "cfg": float, "width": int, "height": int}
KEYS = set(SCALARS) | set(IMAGE_ROLES) | {"set", "output"}
SEPARATOR = "|"


class JobsError(ValueError):
    """A jobs file or a combination of options that makes no batch; the message says which and why."""


@dataclass
class Job:
    """One picture to make; attribute names follow the command-line options they come from."""

    index: int = 0
    prompt: Optional[str] = None
    negative: Optional[str] = None
    style: list = field(default_factory=list)
    content: list = field(default_factory=list)
    control: list = field(default_factory=list)
    seed: Optional[int] = None
    steps: Optional[int] = None
    cfg: Optional[float] = None
    width: Optional[int] = None
    height: Optional[int] = None
    overrides: list = field(default_factory=list)
    output: Optional[Path] = None

    def parameters(self) -> dict:
        """What the PNG records about this job (besides the workflow and prompt ComfyUI embeds)."""
        data = {k: v for k, v in asdict(self).items() if v not in (None, [], "") and k != "index"}
        for role in IMAGE_ROLES:
            if role in data:
                data[role] = [Path(p).name for p in data[role]]
        data.pop("output", None)
        return data


def _groups(paths: list, slots: int, role: str) -> list[list]:
    if not paths:
        return [[]]
    if slots == 0:
        raise JobsError(
            f"--{role} given, but this workflow has no {role} image (a Load Image node feeding "
            f"{'a DEADiff ' + role.capitalize() + ' Encoder' if role != 'control' else 'a ControlNet'})"
        )
    if len(paths) % slots:
        raise JobsError(
            f"this workflow has {slots} {role} image(s): give --{role} {slots} time(s), in order "
            f"(or a multiple of {slots} for a batch, {slots} per picture); got {len(paths)}"
        )
    return [paths[i : i + slots] for i in range(0, len(paths), slots)]


def from_command_line(args, slots: dict) -> list[Job]:
    """prompt x style groups x content groups x control groups x seeds."""
    prompts = args.prompt or [None]
    seeds = args.seed or [None]
    groups = [_groups(list(getattr(args, role)), slots.get(role, 0), role) for role in IMAGE_ROLES]
    jobs = []
    for prompt, style, content, control, seed in itertools.product(prompts, *groups, seeds):
        jobs.append(
            Job(
                prompt=prompt,
                negative=args.negative,
                style=style,
                content=content,
                control=control,
                seed=seed,
                steps=args.steps,
                cfg=args.cfg,
                width=args.width,
                height=args.height,
                overrides=list(args.overrides),
            )
        )
    return number(jobs)


def number(jobs: list[Job]) -> list[Job]:
    for i, job in enumerate(jobs):
        job.index = i + 1
    return jobs


def read_file(path: Path) -> list[dict]:
    """The raw job entries of a jobs file (dicts of the keys above)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise JobsError(f"--jobs {path}: cannot read it ({e})") from e
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise JobsError(f"--jobs {path}: not valid JSON ({e})") from e
        if isinstance(data, dict) and isinstance(data.get("jobs"), list):
            data = data["jobs"]
        if isinstance(data, dict):
            for key, value in data.items():
                if not isinstance(value, list):
                    data[key] = [value]
            keys = list(data)
            entries = [dict(zip(keys, combo)) for combo in itertools.product(*(data[k] for k in keys))]
        elif isinstance(data, list) and all(isinstance(e, dict) for e in data):
            entries = data
        else:
            raise JobsError(f"--jobs {path}: expected a list of job objects or an object of lists (a grid)")
    elif suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
        entries = [{k.strip(): v for k, v in row.items() if k and v not in (None, "")} for row in rows]
    else:
        entries = [
            {"prompt": line.strip()} for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")
        ]
    if not entries:
        raise JobsError(f"--jobs {path}: no jobs in it")
    for number_, entry in enumerate(entries, 1):
        unknown = set(entry) - KEYS
        if unknown:
            raise JobsError(
                f"--jobs {path}: job {number_} has unknown field(s) {sorted(unknown)}; the fields are {sorted(KEYS)}"
            )
    return entries


def from_file(path: Path, args, slots: dict) -> list[Job]:
    """The file's jobs, each completed by the command line's values."""
    path = Path(path)
    for option in ("prompt", "seed"):
        if len(getattr(args, option) or []) > 1:
            raise JobsError(
                f"--jobs with several --{option}: put them in the jobs file, or give --{option} once "
                "as the default of every job"
            )
    base = path.resolve().parent
    jobs = []
    for number_, entry in enumerate(read_file(path), 1):
        where = f"--jobs {path}, job {number_}"
        job = Job(
            negative=args.negative,
            steps=args.steps,
            cfg=args.cfg,
            width=args.width,
            height=args.height,
            prompt=(args.prompt or [None])[0],
            seed=(args.seed or [None])[0],
            overrides=list(args.overrides),
        )
        for key, kind in SCALARS.items():
            if key in entry:
                try:
                    setattr(job, key, kind(entry[key]) if kind is not str else str(entry[key]))
                except (TypeError, ValueError):
                    raise JobsError(f"{where}: {key} {entry[key]!r} is not a valid {kind.__name__}") from None
        for role in IMAGE_ROLES:
            value = entry.get(role)
            if value is None:
                given = list(getattr(args, role))
                groups = _groups(given, slots.get(role, 0), role)
                if len(groups) > 1:
                    raise JobsError(
                        f"--jobs with a batch of --{role} images: put them in the jobs file, or give "
                        f"one picture's worth as the default of every job"
                    )
                setattr(job, role, groups[0])
                continue
            items = value if isinstance(value, list) else str(value).split(SEPARATOR)
            paths = [str(_relative_to(base, str(item).strip())) for item in items if str(item).strip()]
            groups = _groups(paths, slots.get(role, 0), role)
            if len(groups) != 1:
                raise JobsError(f"{where}: {len(paths)} {role} image(s), but the workflow takes {slots.get(role, 0)}")
            setattr(job, role, groups[0])
        if "set" in entry:
            items = entry["set"] if isinstance(entry["set"], list) else str(entry["set"]).split(SEPARATOR)
            job.overrides = job.overrides + [str(s).strip() for s in items if str(s).strip()]
        if "output" in entry:
            job.output = _relative_to(base, str(entry["output"]))
        jobs.append(job)
    return number(jobs)


def _relative_to(base: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def assign_outputs(jobs: list[Job], output: Optional[str], workflow_stem: str, cwd: Path) -> None:
    """Where each job's picture goes. One job: --output as given (default ./<workflow>_<seed>.png). A batch:
    --output DIR/ (or an existing folder) puts <workflow>_NNN_<seed>.png there, --output NAME.png makes
    NAME-NNN.png, and a pattern with {index}, {seed}, {prompt} is formatted per job. A jobs file's own
    `output` wins."""
    width = max(3, len(str(len(jobs))))
    for job in jobs:
        if job.output is not None:
            continue
        seed = f"_{job.seed}" if job.seed is not None else ""
        if output is None:
            name = (
                f"{workflow_stem}{seed}.png" if len(jobs) == 1 else f"{workflow_stem}_{job.index:0{width}d}{seed}.png"
            )
            job.output = cwd / name
            continue
        target = Path(output).expanduser()
        if "{" in output:
            slug = "".join(c if c.isalnum() else "_" for c in (job.prompt or ""))[:40].strip("_")
            try:
                job.output = Path(output.format(index=job.index, seed=job.seed, prompt=slug)).expanduser()
            except (KeyError, IndexError, ValueError) as e:
                raise JobsError(
                    f"--output {output!r}: a pattern may use {{index}}, {{seed}} and {{prompt}} ({e})"
                ) from None
        elif output.endswith(("/", "\\")) or target.is_dir():
            job.output = target / f"{workflow_stem}_{job.index:0{width}d}{seed}.png"
        elif len(jobs) == 1:
            job.output = target
        else:
            job.output = target.with_name(f"{target.stem}-{job.index:0{width}d}{target.suffix}")
    seen: dict = {}
    for job in jobs:
        if job.output.suffix.lower() != ".png":
            raise JobsError(f"--output {job.output}: the picture is a PNG; give a .png path")
        key = str(job.output.resolve())
        if key in seen:
            raise JobsError(
                f"jobs {seen[key]} and {job.index} would both write {job.output}; give each its own "
                "output (a pattern such as --output 'out/{index}_{seed}.png')"
            )
        seen[key] = job.index
