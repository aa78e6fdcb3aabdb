"""The same jobs on running ComfyUI servers, through ComfyUI's own HTTP API (what its front end uses):

- `GET /object_info`: the server's node definitions, to convert the workflow exactly as its front end
  would and to see which model files it has (the loaders' file lists);
- `POST /upload/image`: each reference image into the server's input folder (the server keeps one
  copy of identical images, and renames a different image of the same name);
- `POST /prompt` with a client id: the job, with the workflow and the job's parameters as extra_pnginfo
  so the PNG carries them as a picture saved in the UI does;
- the websocket `/ws?clientId=...`: the job's progress (`executing`, `progress`) and its end
  (`executing` with no node, `execution_error`, `execution_interrupted`);
- `GET /history/{prompt_id}`: the job's outputs; `GET /view`: the PNG, written to the job's output path.

Each server takes the next job as soon as it finishes one, so a batch spreads over the servers by
their speed. A server that stops answering hands its job back to the others. The same seed gives the
same picture as a run in this process, since the server runs the same graph. aiohttp (a ComfyUI
requirement) is the HTTP and websocket client.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Optional

from . import workflows as wf
from .comfy_session import TEST_PACK_ENV
from .workflow_api import WorkflowError

EXIT_FAILED = 1
EXIT_MISSING = 2


class ServerError(RuntimeError):
    """A server that cannot be used (unreachable, not ComfyUI, missing a model); the message says which."""


class JobFailed(RuntimeError):
    """ComfyUI refused or failed one job; the message is ComfyUI's."""


class Server:
    def __init__(self, url: str, http):
        self.url = url.rstrip("/")
        self.http = http
        self.client_id = f"deadiff-run-{uuid.uuid4().hex[:12]}"
        self.object_info: dict = {}

    @property
    def ws_url(self) -> str:
        scheme, rest = self.url.split("://", 1)
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/ws?clientId={self.client_id}"

    async def get_json(self, path: str, **params):
        async with self.http.get(self.url + path, params=params or None) as response:
            if response.status != 200:
                raise ServerError(f"{self.url}{path} answered {response.status}: {(await response.text())[:300]}")
            return await response.json(content_type=None)

    async def connect(self) -> None:
        import aiohttp

        try:
            await self.get_json("/system_stats")
            self.object_info = await self.get_json("/object_info")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as e:
            raise ServerError(
                f"--server {self.url}: no ComfyUI answers there ({type(e).__name__}: {e}); start it, "
                "or check the address"
            ) from e
        if "DEADiffApply" not in self.object_info:
            raise ServerError(
                f"--server {self.url}: this ComfyUI has no DEADiff nodes; install ComfyUI-DEADiff in its "
                "custom_nodes and restart it"
            )

    def node_info(self, class_type: str) -> Optional[dict]:
        return self.object_info.get(class_type)

    async def upload(self, path: Path) -> str:
        import aiohttp

        form = aiohttp.FormData()
        form.add_field("image", path.read_bytes(), filename=path.name, content_type="application/octet-stream")
        async with self.http.post(self.url + "/upload/image", data=form) as response:
            if response.status != 200:
                raise JobFailed(
                    f"{self.url}/upload/image refused {path.name}: {response.status} {(await response.text())[:300]}"
                )
            answer = await response.json(content_type=None)
        return f"{answer['subfolder']}/{answer['name']}" if answer.get("subfolder") else answer["name"]

    async def queue(self, prompt: dict, extra_pnginfo: dict) -> str:
        body = {"prompt": prompt, "client_id": self.client_id, "extra_data": {"extra_pnginfo": extra_pnginfo}}
        async with self.http.post(self.url + "/prompt", json=body) as response:
            answer = await response.json(content_type=None)
            if response.status != 200:
                raise JobFailed(format_refusal(answer, prompt))
        return answer["prompt_id"]

    async def view(self, item: dict) -> bytes:
        params = {
            "filename": item["filename"],
            "subfolder": item.get("subfolder", ""),
            "type": item.get("type", "output"),
        }
        async with self.http.get(self.url + "/view", params=params) as response:
            if response.status != 200:
                raise JobFailed(f"{self.url}/view {params} answered {response.status}")
            return await response.read()


def format_refusal(answer, prompt: dict) -> str:
    """ComfyUI's /prompt 400 answer (error + node_errors) in the runner's words."""
    if not isinstance(answer, dict):
        return f"ComfyUI refused the workflow: {answer}"
    error = answer.get("error") or {}
    lines = [
        f"ComfyUI refused the workflow: {error.get('message', error)}"
        + (f" ({error['details']})" if isinstance(error, dict) and error.get("details") else "")
    ]
    for node_id, info in (answer.get("node_errors") or {}).items():
        title = prompt.get(str(node_id), {}).get("_meta", {}).get("title", info.get("class_type"))
        for item in info.get("errors", []):
            lines.append(f"  node {node_id} ({title}): {item.get('message')}: {item.get('details')}")
    return "\n".join(lines)


def missing_on_server(server: Server, prompt: dict, skip=()) -> list[str]:
    """The model files the prompt names that the server's loaders do not list."""
    missing = []
    for node_id in sorted(prompt, key=wf.numeric_order):
        node = prompt[node_id]
        if node["class_type"] in skip:
            continue
        info = server.node_info(node["class_type"]) or {}
        declared = {**(info.get("input", {}).get("required") or {}), **(info.get("input", {}).get("optional") or {})}
        for name, value in node["inputs"].items():
            folder = wf.MODEL_INPUTS.get((node["class_type"], name))
            if folder is None or not isinstance(value, str):
                continue
            spec = declared.get(name)
            choices = (
                spec[0]
                if isinstance(spec, (list, tuple)) and spec and isinstance(spec[0], list)
                else (
                    (spec[1] or {}).get("options")
                    if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict)
                    else None
                )
            )
            if choices is not None and value not in choices:
                title = node.get("_meta", {}).get("title", node["class_type"])
                missing.append(
                    f"{server.url} has no {folder}/{value} (node {node_id}, {title}); put it in that "
                    f"server's models/{folder} and refresh, or --set {node_id}.{name}=NAME"
                )
    return missing


async def run_job(server: Server, item, reporter, test_hook: bool, cli) -> list[Path]:
    """Upload, queue, follow, fetch: one job on one server; returns the files written."""
    import aiohttp

    job = item.job
    for node_id, (_role, path) in item.assigned.items():
        item.editor.set(node_id, "image", await server.upload(path))
    prompt = item.prompt()
    if test_hook:
        cli.substitute_test_models(prompt)
    titles = {nid: node.get("_meta", {}).get("title", node["class_type"]) for nid, node in prompt.items()}
    async with server.http.ws_connect(server.ws_url, heartbeat=30) as ws:
        prompt_id = await server.queue(prompt, {"workflow": item.editor.workflow, "deadiff_job": job.parameters()})
        label = f"{server.url} job {job.index}"
        while True:
            message = await ws.receive()
            if message.type == aiohttp.WSMsgType.BINARY:
                continue  # previews
            if message.type != aiohttp.WSMsgType.TEXT:
                raise aiohttp.ClientConnectionError(f"the websocket closed ({message.type.name})")
            event = json.loads(message.data)
            data = event.get("data") or {}
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            kind = event.get("type")
            if kind == "executing" and data.get("prompt_id") == prompt_id:
                if data.get("node") is None:
                    break
                reporter.label = label
                reporter.titles = titles
                reporter.node_started(str(data["node"]))
            elif kind == "progress":
                reporter.label = label
                reporter.step(data.get("value"), data.get("max"), node_id=data.get("node"))
            elif kind == "execution_error" and data.get("prompt_id") == prompt_id:
                node_type = data.get("node_type")
                exception = str(data.get("exception_type") or "").rsplit(".", 1)[-1]
                raise JobFailed(
                    f"node {data.get('node_id')} ({titles.get(str(data.get('node_id')), node_type)}) "
                    f"failed on {server.url}: "
                    + (
                        data.get("exception_message", "").strip()
                        if exception == "DEADiffCheckpointError"
                        else f"{exception}: {str(data.get('exception_message', '')).strip()}"
                    )
                )
            elif kind == "execution_interrupted" and data.get("prompt_id") == prompt_id:
                raise JobFailed(f"{server.url} interrupted the job")
    history = (await server.get_json(f"/history/{prompt_id}")).get(prompt_id) or {}
    status = history.get("status") or {}
    if status.get("status_str") not in (None, "success"):
        raise JobFailed(f"{server.url}: the job ended with status {status.get('status_str')}")
    items = [
        image
        for node_id in sorted(history.get("outputs", {}), key=wf.numeric_order)
        for image in history["outputs"][node_id].get("images", []) or []
        if image.get("type") == "output"
    ]
    if not items:
        raise JobFailed("the workflow saved no picture: it needs a Save Image node")
    job.output.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for index, image in enumerate(items):
        target = cli.numbered(job.output, index)
        target.write_bytes(await server.view(image))
        written.append(target)
    return written


async def _run(args, workflow_path: Path, workflow: dict, jobs, cli) -> int:
    import aiohttp

    test_hook = bool(os.environ.get(TEST_PACK_ENV))
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=20, sock_read=None)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        servers = [Server(url, http) for url in args.server]
        for server in servers:
            await server.connect()
        first = servers[0]
        try:
            roles = cli.analyse_workflow(workflow, first.node_info)
            if jobs is None:
                jobs = cli.make_jobs(args, roles)
                cli.jobs_mod.assign_outputs(jobs, args.output, workflow_path.stem, Path.cwd())
            prepared = [cli.prepare(workflow, first.node_info, roles, job) for job in jobs]
        except (WorkflowError, cli.JobsError, FileNotFoundError) as e:
            return cli.fail(str(e), EXIT_MISSING)
        if test_hook:
            cli.say(f"TEST HOOK {TEST_PACK_ENV} is set: the servers get tiny random test models")
        skip = tuple(cli.TEST_SUBSTITUTES) if test_hook else ()
        problems = []
        for server in servers:
            for item in prepared:
                for line in missing_on_server(server, item.prompt(), skip):
                    if line not in problems:
                        problems.append(line)
        if problems:
            print(
                "the servers lack files this workflow needs (nothing was queued):\n  " + "\n  ".join(problems),
                file=sys.stderr,
            )
            return EXIT_MISSING
        if args.check:
            for server in servers:
                print(f"server  {server.url}  ok: DEADiff nodes and every file the workflow names")
            return 0

        batch = len(prepared) > 1
        from .progress import BatchReporter

        reporter = BatchReporter(len(prepared), quiet=args.quiet)
        pending: asyncio.Queue = asyncio.Queue()
        for item in prepared:
            pending.put_nowait(item)
        written: list = []
        failures: list = []
        times: list = []
        alive = {server.url for server in servers}
        per_server: dict = {server.url: 0 for server in servers}

        async def worker(server: Server):
            while True:
                try:
                    item = pending.get_nowait()
                except asyncio.QueueEmpty:
                    return
                started = time.monotonic()
                reporter.job_started(item.job.index, f"{server.url} {cli.job_label(item.job, len(prepared))}")
                try:
                    files = await run_job(server, item, reporter, test_hook, cli)
                except JobFailed as e:
                    failures.append((item.job, str(e)))
                    reporter.job_finished(False, f"job {item.job.index}: {e}")
                    continue
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                    alive.discard(server.url)
                    if alive:  # hand the job to the servers still answering
                        cli.say(f"{server.url} stopped answering ({type(e).__name__}: {e}); its job goes to the others")
                        pending.put_nowait(item)
                    else:
                        failures.append((item.job, f"{server.url} stopped answering ({type(e).__name__}: {e})"))
                        reporter.job_finished(False, f"job {item.job.index}: {server.url} stopped answering")
                        while not pending.empty():
                            lost = pending.get_nowait()
                            failures.append((lost.job, "no server left"))
                    return
                times.append(time.monotonic() - started)
                per_server[server.url] += 1
                written.extend(files)
                reporter.job_finished(True)

        started = time.monotonic()
        try:
            await asyncio.gather(*(worker(server) for server in servers))
        finally:
            reporter.close()
        elapsed = time.monotonic() - started
    for path in sorted(written, key=str):
        print(path)
    if failures and not batch:
        return cli.fail(failures[0][1], EXIT_FAILED)
    if batch:
        spread = ", ".join(f"{url}: {count}" for url, count in per_server.items())
        failed = f", {len(failures)} failed" if failures else ""
        print(
            f"deadiff-run: {len(times)} of {len(prepared)} jobs done{failed} in {elapsed:.1f} s on "
            f"{len(servers)} server(s) (pictures per server: {spread})",
            file=sys.stderr,
        )
        for job, message in sorted(failures, key=lambda f: f[0].index):
            print(f"  job {job.index} failed: {message}", file=sys.stderr)
    return EXIT_FAILED if failures else 0


def main(args, workflow_path: Path, workflow: dict, jobs) -> int:
    from . import cli

    try:
        return asyncio.run(_run(args, workflow_path, workflow, jobs, cli))
    except ServerError as e:
        return cli.fail(str(e), EXIT_MISSING)
