"""Running prepared jobs in this process's ComfyUI session: each queued through ComfyUI's executor, its
pictures moved to --output, and a batch summed up (remote.py runs the same jobs on servers).
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from pathlib import Path

from . import workflows as wf
from .comfy_session import RunError, Session
from .console import EXIT_FAILED, EXIT_MISSING, fail, say
from .job_edits import Prepared, job_label, substitute_test_models, upload_images
from .progress import BatchReporter, ProgressReporter


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
