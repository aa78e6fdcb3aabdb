"""Console progress for a headless run: one line per node as ComfyUI starts it, a bar for its steps.

ComfyUI reports node starts through its executor's "executing" messages and step progress (the
sampler's steps, for one) through `comfy.utils.ProgressBar`, whose global hook this reporter is.
"""

from __future__ import annotations

import sys

try:
    from tqdm import tqdm
except ImportError:  # tqdm is a ComfyUI requirement, but stay usable without it
    tqdm = None


class ProgressReporter:
    def __init__(self, stream=None, quiet: bool = False):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.titles: dict = {}
        self.total_nodes = 0
        self.started = 0
        self.current = None
        self.bar = None
        self.last_step = None

    def start(self, prompt: dict, outputs) -> None:
        self.titles = {nid: node.get("_meta", {}).get("title", node.get("class_type")) for nid, node in prompt.items()}
        self.total_nodes = len(prompt)
        self.started = 0

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self.last_step = None

    def node_started(self, node_id: str) -> None:
        self._close_bar()
        self.current = node_id
        self.started += 1
        if not self.quiet:
            print(
                f"[{self.started}/{self.total_nodes}] {self.titles.get(node_id, node_id)}", file=self.stream, flush=True
            )

    def step(self, value, total, preview=None, node_id=None, prompt_id=None) -> None:
        """comfy.utils.ProgressBar's global hook."""
        if self.quiet:
            return
        label = self.titles.get(str(node_id) if node_id is not None else self.current, "")
        if tqdm is not None:
            if self.bar is None or self.bar.total != total:
                self._close_bar()
                self.bar = tqdm(total=total, desc=f"  {label}", file=self.stream, leave=True, dynamic_ncols=True)
            self.bar.update(max(0, value - self.bar.n))
        elif value != self.last_step:
            print(f"  {label}: {value}/{total}", file=self.stream, flush=True)
        self.last_step = value

    def finish(self) -> None:
        self._close_bar()


class BatchReporter:
    """Progress of a batch: one bar over the jobs; the current job's node and sampler step as its postfix.

    Has ProgressReporter's interface (start, node_started, step, finish) for each job's run, plus
    job_started / job_finished for the batch."""

    def __init__(self, total_jobs: int, stream=None, quiet: bool = False, unit: str = "picture"):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.total_jobs = total_jobs
        self.done = 0
        self.failed = 0
        self.label = ""
        self.titles: dict = {}
        self.current = None
        self.ran: list[set] = []  # per job, the nodes ComfyUI executed (cached nodes send no "executing")
        self.bar = None
        if not quiet and tqdm is not None:
            self.bar = tqdm(total=total_jobs, desc="batch", unit=unit, file=self.stream, dynamic_ncols=True)

    def _show(self, text: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.set_postfix_str(text, refresh=True)

    def job_started(self, index: int, label: str) -> None:
        self.label = label
        self.ran.append(set())
        if self.bar is None and not self.quiet:
            print(f"[{index}/{self.total_jobs}] {label}", file=self.stream, flush=True)
        self._show(label)

    def job_finished(self, ok: bool, message: str = "") -> None:
        self.done += 1
        self.failed += 0 if ok else 1
        if self.bar is not None:
            if not ok:
                self.bar.write(f"  failed: {message}", file=self.stream)
            self.bar.update(1)
        elif not ok and not self.quiet:
            print(f"  failed: {message}", file=self.stream, flush=True)

    # ProgressReporter's interface, per job
    def start(self, prompt: dict, outputs) -> None:
        self.titles = {nid: node.get("_meta", {}).get("title", node.get("class_type")) for nid, node in prompt.items()}

    def node_started(self, node_id: str) -> None:
        self.current = node_id
        if self.ran:
            self.ran[-1].add(self.titles.get(node_id, node_id))
        self._show(f"{self.label}: {self.titles.get(node_id, node_id)}")

    def reused(self) -> list[str]:
        """Nodes the first job ran and no later job ran again: ComfyUI's cache served them (the loaders)."""
        if len(self.ran) < 2:
            return []
        later = set().union(*self.ran[1:])
        return sorted(self.ran[0] - later)

    def step(self, value, total, preview=None, node_id=None, prompt_id=None) -> None:
        label = self.titles.get(str(node_id) if node_id is not None else self.current, "")
        self._show(f"{self.label}: {label} {value}/{total}")

    def finish(self) -> None:
        pass

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
