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

import logging
import os
import sys
import time
from pathlib import Path

from . import jobs as jobs_mod
from . import models_home
from . import workflows as wf
from .arguments import UsageError, build_parser, check_options
from .comfy_session import TEST_PACK_ENV, BootError, Session, enclosing_comfyui, find_comfyui
from .console import EXIT_FAILED, EXIT_MISSING, EXIT_USAGE, fail, say
from .installed_files import (
    download_missing,
    misplaced_hints,
    missing_report,
    print_check,
    requirements_of,
    use_compact,
    wrong_kind_errors,
)
from .job_edits import TEST_SUBSTITUTES, prepare
from .jobs import JobsError
from .local_jobs import run_jobs
from .preflight import analyse_workflow, make_jobs, preflight
from .workflow_api import WorkflowError

# remote.py reaches these through this module (the `cli` it is handed)
from .job_edits import job_label, substitute_test_models  # noqa: F401
from .local_jobs import numbered  # noqa: F401


def list_examples() -> int:
    for name in wf.example_names():
        workflow = wf.load_workflow(wf.EXAMPLES_DIR / f"{name}.json")
        note = next((n for n in workflow["nodes"] if n.get("type") == "Note"), None)
        first = note["widgets_values"][0].split("\n")[0] if note and note.get("widgets_values") else ""
        print(f"{name:28s} {first}")
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
