"""The example workflows, what they need, and the edits the command line makes to them.

Edits are made on the UI workflow (its widgets_values), so the workflow embedded in the output PNG
is the one that made the picture; the roles of its nodes (which LoadImage is the style reference,
which text is the positive prompt) are read from the graph's links, not from titles, so a workflow
of your own works as long as it is wired the same way.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .workflow_api import VIRTUAL_NODE_TYPES, WorkflowError, set_widget_value, ui_nodes_by_id, ui_to_api, widget_layout

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "example_workflows"
DEFAULT_WORKFLOW = "deadiff_style_transfer"
OFFICIAL_NEGATIVE = (
    "over-exposure, under-exposure, saturated, duplicate, out of frame, lowres, cropped, worst "
    "quality, low quality, jpeg artifacts, morbid, mutilated, out of frame, ugly, bad anatomy, "
    "bad proportions, deformed, blurry, duplicate"
)

# (node type, input) -> ComfyUI model folder of the file it names
MODEL_INPUTS = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("CheckpointLoader", "ckpt_name"): "checkpoints",
    ("DEADiffModelLoader", "deadiff_name"): "deadiff",
    ("ControlNetLoader", "control_net_name"): "controlnet",
    ("DiffControlNetLoader", "control_net_name"): "controlnet",
    ("LoraLoader", "lora_name"): "loras",
    ("LoraLoaderModelOnly", "lora_name"): "loras",
    ("VAELoader", "vae_name"): "vae",
}
# where to get the files the examples name
KNOWN_SOURCES = {
    "deadiff_v1.ckpt": "Hugging Face qth/DEADiff, https://huggingface.co/qth/DEADiff (the official DEADiff "
    "weights; read their licence first). Use the file as downloaded, no renaming.",
    "v1-5-pruned-emaonly.safetensors": "the SD1.5 release on Hugging Face, "
    "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5",
    "control_v11p_sd15_canny.pth": "Hugging Face lllyasviel/ControlNet-v1-1, "
    "https://huggingface.co/lllyasviel/ControlNet-v1-1",
}
FOLDER_SOURCES = {
    "checkpoints": "any SD1.5 checkpoint or fine-tune you have",
    "deadiff": (
        "deadiff_v1.ckpt from https://huggingface.co/qth/DEADiff, or a compact file made from it by deadiff-convert"
    ),
    "controlnet": "an SD1.5 ControlNet of the matching kind",
    "loras": "any SD1.5 LoRA you have",
    "vae": "an SD1.5 VAE",
}
# (node type, input) naming saved DEADiff tokens: a file in input/deadiff/, or in output/deadiff/ when the
# name ends with " [output]" (what DEADiff Save Tokens writes with its default prefix)
TOKEN_INPUTS = {("DEADiffLoadStyle", "tokens_file"), ("DEADiffLoadContent", "tokens_file")}
TOKENS_SUBFOLDER = "deadiff"
OUTPUT_SUFFIX = " [output]"
IMAGE_ROLES = ("style", "content", "control")
ENCODER_ROLES = {"DEADiffStyleEncoder": "style", "DEADiffContentEncoder": "content"}


def example_names() -> list[str]:
    return sorted(p.stem for p in EXAMPLES_DIR.glob("*.json"))


def find_workflow(name_or_path: Optional[str]) -> Path:
    """An example by name (with or without .json / the deadiff_ prefix) or a workflow file path."""
    name_or_path = name_or_path or DEFAULT_WORKFLOW
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path.resolve()
    stem = path.name[:-5] if path.name.endswith(".json") else path.name
    for candidate in (stem, f"deadiff_{stem}"):
        example = EXAMPLES_DIR / f"{candidate}.json"
        if example.is_file():
            return example
    raise WorkflowError(
        f"no workflow {name_or_path!r}: not a file, and not one of the examples "
        f"({', '.join(example_names()) or 'none found in ' + str(EXAMPLES_DIR)})"
    )


def load_workflow(path: Path) -> dict:
    try:
        workflow = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise WorkflowError(f"cannot read workflow {path}: {e}") from e
    if not isinstance(workflow, dict) or "nodes" not in workflow:
        raise WorkflowError(
            f"{path} is not a ComfyUI UI workflow (no 'nodes'); save it from the ComfyUI menu "
            "with Workflow > Save (not Export (API))"
        )
    return workflow


@dataclass
class Requirement:
    node_id: str
    title: str
    folder: str
    filename: str
    input_name: str
    path: Optional[str] = None  # where it was found

    @property
    def source(self) -> str:
        return KNOWN_SOURCES.get(self.filename) or FOLDER_SOURCES.get(self.folder, "")


@dataclass
class GraphRoles:
    """What each node does in the picture, read from an API prompt's links."""

    images: dict = field(default_factory=lambda: defaultdict(list))  # role -> [LoadImage node ids]
    positive: set = field(default_factory=set)  # text-encoder node ids feeding a sampler's positive
    negative: set = field(default_factory=set)
    samplers: list = field(default_factory=list)
    latents: list = field(default_factory=list)


def _links(prompt: dict):
    for node_id, node in prompt.items():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                yield node_id, name, value[0], value[1]


def numeric_order(node_id: str):
    return (0, int(node_id)) if str(node_id).isdigit() else (1, str(node_id))


def analyse(prompt: dict, node_info) -> GraphRoles:
    roles = GraphRoles()
    consumers = defaultdict(list)
    for node_id, name, source, _slot in _links(prompt):
        consumers[source].append((node_id, name))

    for node_id in sorted(prompt, key=numeric_order):
        node = prompt[node_id]
        inputs = node["inputs"]
        if node["class_type"] == "LoadImage":
            found, queue, seen = [], [node_id], {node_id}
            while queue:
                current = queue.pop(0)
                for target, name in consumers[current]:
                    target_type = prompt[target]["class_type"]
                    if target_type in ENCODER_ROLES:
                        found.append(ENCODER_ROLES[target_type])
                    elif target_type == "Canny" or (target_type.startswith("ControlNetApply") and name == "image"):
                        found.append("control")
                    elif target not in seen:
                        seen.add(target)
                        queue.append(target)
            for role in IMAGE_ROLES:
                if role in found:
                    roles.images[role].append(node_id)
        if any(k in inputs for k in ("seed", "noise_seed")) and "steps" in inputs:
            roles.samplers.append(node_id)
            for branch in ("positive", "negative"):
                if isinstance(inputs.get(branch), list):
                    getattr(roles, branch).update(_trace_text(prompt, node_info, inputs[branch], set()))
        info = node_info(node["class_type"]) or {}
        if {"width", "height", "batch_size"} <= set(inputs) and "LATENT" in (info.get("output") or []):
            roles.latents.append(node_id)
    return roles


def _trace_text(prompt: dict, node_info, link, seen: set) -> set:
    """The text-encoder nodes a CONDITIONING link comes from, through ControlNet-like nodes."""
    source, slot = link[0], link[1]
    if (source, slot) in seen or source not in prompt:
        return set()
    seen.add((source, slot))
    node = prompt[source]
    if "text" in node["inputs"]:
        return {source}
    info = node_info(node["class_type"]) or {}
    names = [str(n).lower() for n in (info.get("output_name") or [])]
    wanted = names[slot] if slot < len(names) else ""
    declared = {**(info.get("input", {}).get("required") or {}), **(info.get("input", {}).get("optional") or {})}
    follow = (
        [wanted]
        if isinstance(node["inputs"].get(wanted), list)
        else [
            name
            for name, spec in declared.items()
            if isinstance(node["inputs"].get(name), list)
            and isinstance(spec, (list, tuple))
            and spec
            and spec[0] == "CONDITIONING"
        ]
    )
    found = set()
    for name in follow:
        found |= _trace_text(prompt, node_info, node["inputs"][name], seen)
    return found


class Editor:
    """Command-line edits applied to a UI workflow's widget values."""

    def __init__(self, workflow: dict, node_info):
        self.workflow = workflow
        self.node_info = node_info
        self.ui_nodes = ui_nodes_by_id(workflow)

    def api(self) -> dict:
        return ui_to_api(self.workflow, self.node_info)

    def set(self, node_id: str, name: str, value) -> None:
        node = self.ui_nodes[str(node_id)]
        info = self.node_info(node["type"])
        check_range(info, name, value, f"node {node_id} ({self.title(node_id)})")
        set_widget_value(node, info, name, value)

    def title(self, node_id: str) -> str:
        """What ComfyUI shows (and the runner prints): the node's title, else its type's display name."""
        node = self.ui_nodes[str(node_id)]
        return node.get("title") or self.display_name(node["type"])

    def display_name(self, class_type: str) -> str:
        info = self.node_info(class_type) or {}
        return info.get("display_name") or class_type

    def display_names(self, class_type: str) -> list:
        info = self.node_info(class_type) or {}
        return info.get("display_names") or [info.get("display_name") or class_type]

    def find_node(self, target: str) -> str:
        """A node by id, by title, by type or by its type's display name (what the runner prints for a node
        without a title); case-insensitive, and it must be unique."""
        if str(target) in self.ui_nodes:
            return str(target)
        real = {nid: n for nid, n in self.ui_nodes.items() if n.get("type") not in VIRTUAL_NODE_TYPES}
        keys = (
            ("title", lambda n: [n.get("title")]),
            ("type", lambda n: [n.get("type")]),
            ("display name", lambda n: self.display_names(n.get("type"))),
            ("shown name", lambda n: [n.get("title")] if n.get("title") else self.display_names(n.get("type"))),
        )
        for key, read in keys:
            hits = [nid for nid, n in real.items() if target.lower() in [str(v or "").lower() for v in read(n)]]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise WorkflowError(
                    f"{len(hits)} nodes have the {key} {target!r} (ids {', '.join(hits)}): use the node id"
                )
        listed = "; ".join(
            f"{nid} {self.title(nid)!r} ({n.get('type')})"
            for nid, n in sorted(real.items(), key=lambda item: numeric_order(item[0]))
        )
        raise WorkflowError(f"no node with id, title, type or name {target!r}; this workflow's nodes: {listed}")

    def apply_override(self, spec: str) -> None:
        """NODE.INPUT=VALUE, NODE being an id, a title or a type; VALUE converted to the widget's type."""
        target, sep, value = spec.partition("=")
        node_ref, dot, name = target.rpartition(".")
        if not sep or not dot or not node_ref or not name:
            raise WorkflowError(
                f"--set {spec!r}: write NODE.INPUT=VALUE, e.g. --set 'Load LoRA.lora_name=x.safetensors'"
            )
        node_id = self.find_node(node_ref.strip())
        node = self.ui_nodes[node_id]
        kinds = {w.name: w.input_type for w in widget_layout(self.node_info(node["type"])) if w.name}
        if name.strip() not in kinds:
            raise WorkflowError(
                f"--set {spec!r}: node {node_id} ({self.title(node_id)}) has no widget {name.strip()!r}; "
                f"its widgets are {sorted(kinds)}"
            )
        converted = convert_value(value, kinds[name.strip()], spec)
        try:
            self.set(node_id, name.strip(), converted)
        except WorkflowError as e:
            raise WorkflowError(f"--set {spec!r}: {e}") from None


def check_range(info: Optional[dict], name: str, value, where: str) -> None:
    """A number outside the widget's min/max is refused here, before ComfyUI's validation would."""
    if not info or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    declared = {
        **((info.get("input") or {}).get("required") or {}),
        **((info.get("input") or {}).get("optional") or {}),
    }
    spec = declared.get(name)
    options = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}
    low, high = options.get("min"), options.get("max")
    if low is not None and value < low:
        raise WorkflowError(f"{where}: {name} {value} is below its minimum {low}")
    if high is not None and value > high:
        raise WorkflowError(f"{where}: {name} {value} is above its maximum {high}")


def convert_value(text: str, kind: str, spec: str):
    try:
        if kind == "INT":
            return int(text)
        if kind == "FLOAT":
            return float(text)
        if kind == "BOOLEAN":
            lowered = text.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return lowered in ("true", "1", "yes")
    except ValueError:
        raise WorkflowError(f"--set {spec!r}: {text!r} is not a valid {kind}") from None
    return text


def model_requirements(prompt: dict, folder_paths, skip_types=()) -> list[Requirement]:
    """The weight files the prompt names, each with where it was found (path None: missing)."""
    found = []
    for node_id in sorted(prompt, key=numeric_order):
        node = prompt[node_id]
        if node["class_type"] in skip_types:
            continue
        for name, value in node["inputs"].items():
            folder = MODEL_INPUTS.get((node["class_type"], name))
            if folder is None or not isinstance(value, str):
                continue
            title = node.get("_meta", {}).get("title", node["class_type"])
            try:
                path = folder_paths.get_full_path(folder, value)
            except KeyError:  # folder not registered (e.g. the pack failed to load)
                path = None
            found.append(Requirement(node_id, title, folder, value, name, path))
    return found


@dataclass
class TokensFile:
    node_id: str
    title: str
    value: str  # as the Load node's list shows it
    path: Path  # where the Load node reads it

    @property
    def folder(self) -> Path:
        return self.path.parent


def token_files(prompt: dict, folder_paths) -> list[TokensFile]:
    """The saved style / content files the prompt loads, with where they must be."""
    found = []
    for node_id in sorted(prompt, key=numeric_order):
        node = prompt[node_id]
        for name, value in node["inputs"].items():
            if (node["class_type"], name) not in TOKEN_INPUTS or not isinstance(value, str):
                continue
            if value.endswith(OUTPUT_SUFFIX):
                root, relative = folder_paths.get_output_directory(), value[: -len(OUTPUT_SUFFIX)]
            else:
                root, relative = folder_paths.get_input_directory(), value
            title = node.get("_meta", {}).get("title", node["class_type"])
            found.append(TokensFile(node_id, title, value, Path(root) / TOKENS_SUBFOLDER / relative))
    return found


def new_output_folders(prompt: dict, output_dir: Path) -> list[Path]:
    """The folders under ComfyUI's output folder (and that folder) that the prompt's output nodes will
    create (their filename_prefix's folders that do not exist yet), deepest first."""
    found = set() if output_dir.exists() else {output_dir}
    for node in prompt.values():
        prefix = node["inputs"].get("filename_prefix")
        if not isinstance(prefix, str):
            continue
        folder = (output_dir / prefix).parent
        while folder != output_dir and output_dir in folder.parents and not folder.exists():
            found.add(folder)
            folder = folder.parent
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def folder_for(folder_paths, folder: str) -> str:
    try:
        return folder_paths.get_folder_paths(folder)[0]
    except (KeyError, IndexError):
        return str(Path(folder_paths.models_dir) / folder)
