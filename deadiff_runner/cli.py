"""deadiff-run: run a DEADiff example workflow headless, through ComfyUI in this process.

    bash scripts/run.sh --style ref.png --prompt "a lighthouse at dusk" --output out.png
    python -m deadiff_runner.cli --workflow controlnet --style ref.png --control edges_from.png
    python -m deadiff_runner.cli --check

The workflow is one of example_workflows/ (default: deadiff_style_transfer) or any UI workflow file
saved from ComfyUI. It is converted with the running ComfyUI's own node definitions, validated by
ComfyUI and executed by ComfyUI's executor; the PNG is written by ComfyUI's Save Image node, with the
API prompt and the (edited) workflow embedded as the "prompt" and "workflow" text chunks, so the
picture opens in ComfyUI as the workflow that made it. The picture is moved from ComfyUI's output
folder to --output; anything else the workflow saves (a style saved by DEADiff Save Tokens) stays in
ComfyUI's output folder, as in the UI, where DEADiff Load Style finds it.

Exit status: 0 done; 1 ComfyUI refused or failed the workflow; 2 something is missing (a weight
file, an input image, ComfyUI itself) or the arguments are wrong, reported before anything loads.

Test-only hook: with DEADIFF_RUNNER_TEST_PACK=/path/to/tests/comfy_test_pack in the environment the
runner also loads that test node pack and replaces every CheckpointLoaderSimple by its tiny random
SD1.5 (DEADiffTest_TinySD15) and every ControlNetLoader by DEADiffTest_TinyControlNet, because a
real SD1.5 file cannot exist in the test suite. It says so on stderr; never set it otherwise.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import shutil
import sys
from pathlib import Path

from . import workflows as wf
from .comfy_session import TEST_PACK_ENV, BootError, RunError, Session, find_comfyui
from .progress import ProgressReporter
from .workflow_api import WorkflowError

EXIT_FAILED = 1
EXIT_MISSING = 2
TEST_SUBSTITUTES = {"CheckpointLoaderSimple": "DEADiffTest_TinySD15", "ControlNetLoader": "DEADiffTest_TinyControlNet"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="deadiff-run",
        description="Run a DEADiff example workflow headless through ComfyUI and save the picture as a PNG "
                    "(with the workflow embedded, like ComfyUI's Save Image).",
        epilog=f"Examples: {', '.join(wf.example_names())}. Exit status: 0 done, 1 ComfyUI failed, 2 something "
               "missing or wrong arguments.")
    g = p.add_argument_group("what to run")
    g.add_argument("--workflow", "-w", metavar="NAME|PATH", default=None,
                   help=f"an example name (default {wf.DEFAULT_WORKFLOW}) or a UI workflow .json file")
    g.add_argument("--style", action="append", default=[], metavar="IMAGE",
                   help="style reference image; give it once per style reference the workflow has")
    g.add_argument("--content", action="append", default=[], metavar="IMAGE",
                   help="content reference image (content / style-and-content examples)")
    g.add_argument("--control", action="append", default=[], metavar="IMAGE",
                   help="image whose edges the ControlNet follows (controlnet example)")
    g.add_argument("--prompt", "-p", help="the positive prompt (default: the workflow's)")
    g.add_argument("--negative", "-n", help="the negative prompt (default: the workflow's; the examples use the "
                                            "official DEADiff negative prompt)")
    g.add_argument("--seed", type=int, help="sampler seed (default: the workflow's)")
    g.add_argument("--steps", type=int, help="sampling steps (default: the workflow's; 50 in the examples)")
    g.add_argument("--cfg", type=float, help="CFG scale (default: the workflow's; 8 in the examples)")
    g.add_argument("--width", type=int, help="picture width in pixels, a multiple of 8 (default: the workflow's)")
    g.add_argument("--height", type=int, help="picture height in pixels, a multiple of 8 (default: the workflow's)")
    g.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.INPUT=VALUE",
                   help="set any widget; NODE is a node id, title or type, e.g. --set 'Load LoRA.lora_name=x.safetensors' "
                        "or --set 5.style_weight=0.8")
    g.add_argument("--output", "-o", metavar="PATH.png",
                   help="where to write the picture (default: ./<workflow>_<seed>.png); more pictures get -2, -3, ...")
    c = p.add_argument_group("where things are")
    c.add_argument("--comfyui-dir", metavar="DIR", help="the ComfyUI to run (default: $COMFYUI_DIR, else the "
                                                          "ComfyUI whose custom_nodes holds this pack)")
    c.add_argument("--base-directory", metavar="DIR", help="ComfyUI base folder with models/, input/, custom_nodes/ "
                                                           "(ComfyUI's --base-directory; default: the ComfyUI folder)")
    c.add_argument("--models-dir", metavar="DIR", help="a ComfyUI models folder to look in first "
                                                       "(DIR/checkpoints, DIR/deadiff, DIR/controlnet, DIR/loras, ...)")
    c.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is available (slow)")
    c.add_argument("--only-deadiff-nodes", action="store_true",
                   help="load no other custom node pack (the examples need none)")
    o = p.add_argument_group("other")
    o.add_argument("--check", action="store_true", help="report what the workflow needs and what is missing; "
                                                        "exit 0 when complete, 2 otherwise")
    o.add_argument("--list", action="store_true", help="list the example workflows and exit")
    o.add_argument("--verbose", "-v", action="store_true", help="show ComfyUI's log")
    o.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    return p


def fail(message: str, code: int) -> int:
    print(f"deadiff-run: {message}", file=sys.stderr)
    return code


def list_examples() -> int:
    for name in wf.example_names():
        workflow = wf.load_workflow(wf.EXAMPLES_DIR / f"{name}.json")
        note = next((n for n in workflow["nodes"] if n.get("type") == "Note"), None)
        first = (note["widgets_values"][0].split("\n")[0] if note and note.get("widgets_values") else "")
        print(f"{name:28s} {first}")
    return 0


def check_images_exist(args) -> None:
    for option in ("style", "content", "control"):
        for path in getattr(args, option):
            if not Path(path).expanduser().is_file():
                raise FileNotFoundError(f"--{option} {path}: no such file")


def copy_into_input(session: Session, source: Path) -> str:
    """Put a user image into ComfyUI's input folder (as an upload in the UI does); return its name."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as image:
            image.verify()
    except (UnidentifiedImageError, OSError) as e:
        raise FileNotFoundError(f"{source} is not an image ComfyUI can read ({e})") from e
    input_dir = Path(session.folder_paths.get_input_directory())
    input_dir.mkdir(parents=True, exist_ok=True)
    data = source.read_bytes()
    target = input_dir / source.name
    if target.exists() and target.read_bytes() != data:
        target = input_dir / f"{source.stem}_{hashlib.sha256(data).hexdigest()[:8]}{source.suffix}"
    if not target.exists():
        shutil.copyfile(source, target)
    return target.name


def assign_images(editor: wf.Editor, roles: wf.GraphRoles, args) -> dict:
    """node id -> (role, user path) for every LoadImage the command line sets (named by the file's
    name for now; `upload_images` puts the files into ComfyUI's input folder once the run goes ahead)."""
    assigned: dict = {}
    for role in wf.IMAGE_ROLES:
        given = getattr(args, role)
        loaders = roles.images.get(role, [])
        if not given:
            continue
        if not loaders:
            raise WorkflowError(f"--{role} given, but this workflow has no {role} image (a Load Image node feeding "
                                f"{'a DEADiff ' + role.capitalize() + ' Encoder' if role != 'control' else 'a ControlNet'})")
        if len(given) != len(loaders):
            listed = ", ".join(f"{n} ({editor.title(n)})" for n in loaders)
            raise WorkflowError(f"this workflow has {len(loaders)} {role} image(s), nodes {listed}: give --{role} "
                                f"{len(loaders)} time(s), in that order")
        for node_id, path in zip(loaders, given):
            path = Path(path).expanduser().resolve()
            if node_id in assigned and assigned[node_id][1] != path:
                raise WorkflowError(f"node {node_id} ({editor.title(node_id)}) is the {assigned[node_id][0]} and the "
                                    f"{role} image at once; give the same file to both options")
            assigned[node_id] = (role, path)
    for node_id, (_role, path) in assigned.items():
        editor.set(node_id, "image", path.name)
    return assigned


def upload_images(editor: wf.Editor, assigned: dict, session: Session) -> None:
    for node_id, (_role, path) in assigned.items():
        editor.set(node_id, "image", copy_into_input(session, path))


def apply_edits(editor: wf.Editor, roles: wf.GraphRoles, args) -> None:
    for option, targets in (("prompt", roles.positive), ("negative", roles.negative)):
        text = getattr(args, option)
        if text is None:
            continue
        if not targets:
            raise WorkflowError(f"--{option}: found no text node feeding the sampler's {option if option == 'negative' else 'positive'} input")
        other = roles.negative if option == "prompt" else roles.positive
        shared = targets & other
        if shared:
            raise WorkflowError(f"--{option}: node {sorted(shared)[0]} feeds both the positive and the negative input")
        for node_id in targets:
            editor.set(node_id, "text", text)
    for option, names in (("seed", ("seed", "noise_seed")), ("steps", ("steps",)), ("cfg", ("cfg",))):
        value = getattr(args, option)
        if value is None:
            continue
        if not roles.samplers:
            raise WorkflowError(f"--{option}: this workflow has no KSampler-like node")
        for node_id in roles.samplers:
            kinds = {w for w in editor.api()[node_id]["inputs"]}
            for name in names:
                if name in kinds:
                    editor.set(node_id, name, value)
    for option in ("width", "height"):
        value = getattr(args, option)
        if value is None:
            continue
        if value % 8:
            raise WorkflowError(f"--{option} {value}: use a multiple of 8")
        if not roles.latents:
            raise WorkflowError(f"--{option}: this workflow has no Empty Latent Image node")
        for node_id in roles.latents:
            editor.set(node_id, option, value)
    for spec in args.overrides:
        editor.apply_override(spec)


def missing_report(workflow_name: str, missing: list, folder_paths, missing_images: list,
                   missing_tokens: list = ()) -> str:
    lines = [f"{workflow_name} needs files that are not installed (nothing was loaded):", ""]
    for req in missing:
        lines.append(f"  {req.filename}  (node {req.node_id}, {req.title})")
        lines.append(f"    put it in:   {wf.folder_for(folder_paths, req.folder)}{os.sep}")
        if req.source:
            lines.append(f"    get it from: {req.source}")
        if req.folder != "deadiff":
            lines.append(f"    or use a file you have: --set {req.node_id}.{req.input_name}=NAME")
        lines.append("")
    for node_id, title, name, role in missing_images:
        lines.append(f"  input image {name!r} (node {node_id}, {title}) is not in "
                     f"{folder_paths.get_input_directory()}: pass --{role} IMAGE")
        lines.append("")
    for tokens in missing_tokens:
        lines.append(f"  saved tokens {tokens.value!r} (node {tokens.node_id}, {tokens.title}) are not in {tokens.folder}")
        lines.append("    save them first with a workflow that has DEADiff Save Tokens (deadiff_saved_style writes "
                     "output/deadiff/my_style_00001_.safetensors),")
        lines.append(f"    or put a shared file in {Path(folder_paths.get_input_directory()) / wf.TOKENS_SUBFOLDER}"
                     f"{os.sep} and pick it: --set {tokens.node_id}.tokens_file=NAME")
        lines.append("")
    if missing:
        lines.append("Models somewhere else? --models-dir /path/to/ComfyUI/models, or --base-directory /path/to/ComfyUI.")
    return "\n".join(lines)


def default_output(workflow_path: Path, prompt: dict, roles: wf.GraphRoles) -> Path:
    seed = next((prompt[n]["inputs"].get("seed", prompt[n]["inputs"].get("noise_seed")) for n in roles.samplers), None)
    suffix = f"_{seed}" if isinstance(seed, int) else ""
    return Path.cwd() / f"{workflow_path.stem}{suffix}.png"


def saved_tokens(outputs: dict) -> list[dict]:
    """What DEADiff Save Tokens nodes reported writing."""
    return [item for node_id in sorted(outputs, key=wf.numeric_order)
            for item in outputs[node_id].get("deadiff_tokens", []) or [] if item.get("type") == "output"]


def collect_outputs(outputs: dict, prompt: dict, output_dir: Path) -> list[Path]:
    files = []
    for node_id in sorted(outputs, key=wf.numeric_order):
        for item in outputs[node_id].get("images", []) or []:
            if item.get("type") != "output":
                continue
            files.append(output_dir / item.get("subfolder", "") / item["filename"])
    return files


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        return list_examples()
    try:
        workflow_path = wf.find_workflow(args.workflow)
        workflow = wf.load_workflow(workflow_path)
        check_images_exist(args)
    except (WorkflowError, FileNotFoundError) as e:
        return fail(str(e), EXIT_MISSING)

    level = logging.INFO if args.verbose else (logging.ERROR if args.quiet else logging.WARNING)
    test_hook = bool(os.environ.get(TEST_PACK_ENV))
    try:
        comfyui_dir = find_comfyui(args.comfyui_dir)
        session = Session(comfyui_dir,
                          base_directory=Path(args.base_directory).expanduser().resolve() if args.base_directory else None,
                          models_dir=Path(args.models_dir).expanduser() if args.models_dir else None,
                          cpu=True if args.cpu else None, only_deadiff_nodes=args.only_deadiff_nodes, log_level=level)
    except BootError as e:
        return fail(str(e), EXIT_MISSING)
    try:
        return _run(args, session, workflow_path, workflow, test_hook)
    finally:
        session.close()


def _run(args, session: Session, workflow_path: Path, workflow: dict, test_hook: bool) -> int:
    folder_paths = session.folder_paths
    node_info = session.node_info()
    editor = wf.Editor(workflow, node_info)
    try:
        roles = wf.analyse(editor.api(), node_info)
        assigned = assign_images(editor, roles, args)
        apply_edits(editor, roles, args)
        prompt = editor.api()
    except (WorkflowError, FileNotFoundError) as e:
        return fail(str(e), EXIT_MISSING)

    skip = ()
    if test_hook:
        skip = tuple(TEST_SUBSTITUTES)
        print(f"deadiff-run: TEST HOOK {TEST_PACK_ENV} is set: "
              f"{', '.join(f'{a} -> {b}' for a, b in TEST_SUBSTITUTES.items())} (tiny random test models)",
              file=sys.stderr)
    requirements = wf.model_requirements(prompt, folder_paths, skip_types=skip)
    missing = [r for r in requirements if r.path is None]
    missing_images = []
    for role in wf.IMAGE_ROLES:
        for node_id in roles.images.get(role, []):
            name = prompt[node_id]["inputs"].get("image")
            if node_id not in assigned and isinstance(name, str) and not folder_paths.exists_annotated_filepath(name):
                missing_images.append((node_id, editor.title(node_id), name, role))

    tokens = wf.token_files(prompt, folder_paths)
    missing_tokens = [t for t in tokens if not t.path.is_file()]

    if args.check:
        print_check(session, workflow_path, requirements, roles, prompt, assigned, missing_images, editor, tokens)
        if missing or missing_images or missing_tokens:
            print("\n" + missing_report(workflow_path.name, missing, folder_paths, missing_images, missing_tokens),
                  file=sys.stderr)
            return EXIT_MISSING
        print("\nEverything this workflow needs is installed.")
        return 0
    if missing or missing_images or missing_tokens:
        print(missing_report(workflow_path.name, missing, folder_paths, missing_images, missing_tokens),
              file=sys.stderr)
        return EXIT_MISSING

    try:
        upload_images(editor, assigned, session)
    except FileNotFoundError as e:
        return fail(str(e), EXIT_MISSING)
    prompt = editor.api()
    if test_hook:
        for node in prompt.values():
            if node["class_type"] in TEST_SUBSTITUTES:
                node["class_type"] = TEST_SUBSTITUTES[node["class_type"]]
                node["inputs"] = {"seed": 0}

    output = Path(args.output).expanduser() if args.output else default_output(workflow_path, prompt, roles)
    if output.suffix.lower() != ".png":
        return fail(f"--output {output}: the picture is a PNG; give a .png path", EXIT_MISSING)
    reporter = ProgressReporter(quiet=args.quiet)
    output_dir = Path(folder_paths.get_output_directory())
    new_folders = wf.new_output_folders(prompt, output_dir)
    try:
        try:
            outputs = session.run(prompt, editor.workflow, reporter)
        except RunError as e:
            if args.verbose and e.traceback:
                print(e.traceback, file=sys.stderr)
            # a file refused as unsafe must be replaced, like a missing one: exit 2 (deadiff-convert does the same)
            return fail(str(e), EXIT_MISSING if "DEADiffUnsafeFileError" in str(e) else EXIT_FAILED)
        for item in saved_tokens(outputs):
            path = output_dir / item.get("subfolder", "") / item["filename"]
            listed = path.relative_to(output_dir / wf.TOKENS_SUBFOLDER).as_posix() + wf.OUTPUT_SUFFIX \
                if (output_dir / wf.TOKENS_SUBFOLDER) in path.parents else None
            print(f"deadiff-run: saved tokens {path}" + (f" (DEADiff Load Style / Load Content list them as "
                                                          f"{listed!r})" if listed else ""), file=sys.stderr)
        files = collect_outputs(outputs, prompt, output_dir)
        if not files:
            return fail("the workflow saved no picture: it needs a Save Image node", EXIT_FAILED)
        output.parent.mkdir(parents=True, exist_ok=True)
        written = []
        for index, source in enumerate(files):
            target = output if index == 0 else output.with_name(f"{output.stem}-{index + 1}{output.suffix}")
            shutil.move(str(source), target)
            written.append(target)
    finally:
        for folder in new_folders:  # the pictures' folders this run created in ComfyUI's output folder
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty
    for path in written:
        print(path)
    return 0


def print_check(session, workflow_path, requirements, roles, prompt, assigned, missing_images, editor,
                tokens=()) -> None:
    version = "?"
    version_file = session.comfyui_dir / "comfyui_version.py"
    for line in version_file.read_text().splitlines():
        if line.startswith("__version__"):
            version = line.split("=", 1)[1].strip().strip("\"'")
    import comfy.model_management as mm

    print(f"ComfyUI        {session.comfyui_dir} ({version})")
    print(f"base folder    {session.base_directory}")
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


if __name__ == "__main__":
    sys.exit(main())
