"""Save a style or content as a small .safetensors, and load it back without the reference image.

Saved to ComfyUI's output folder (output/deadiff/ by default); loaded from input/deadiff/ or
output/deadiff/. A file records which DEADiff weights made it, and loading refuses it for others:
tokens only mean something to the site projections of the model whose Q-Former produced them.
"""

from __future__ import annotations

import os

import folder_paths

from ..deadiff_core.tokens import load_tokens, save_tokens
from ..deadiff_core.sites import CONTENT, STYLE
from .sockets import CATEGORY, DEADIFF, DEADIFF_CONTENT, DEADIFF_STYLE, io, schema

SUBFOLDER = "deadiff"
EXTENSION = ".safetensors"
OUTPUT_TAG = " [output]"


def _roots() -> list[tuple[str, str]]:
    return [
        ("", os.path.join(folder_paths.get_input_directory(), SUBFOLDER)),
        (OUTPUT_TAG, os.path.join(folder_paths.get_output_directory(), SUBFOLDER)),
    ]


def saved_token_files() -> list[str]:
    """Files in input/deadiff and output/deadiff (the latter tagged ' [output]'), newest first."""
    found = []
    for tag, root in _roots():
        for folder, _, files in os.walk(root, followlinks=True):
            for name in files:
                if name.endswith(EXTENSION):
                    path = os.path.join(folder, name)
                    found.append((os.path.getmtime(path), os.path.relpath(path, root).replace(os.sep, "/") + tag))
    return [name for _, name in sorted(found, reverse=True)]


def resolve(name: str) -> str:
    tag, root = _roots()[1] if name.endswith(OUTPUT_TAG) else _roots()[0]
    relative = name[: -len(tag)] if tag else name
    path = os.path.abspath(os.path.join(root, relative))
    if os.path.commonpath([path, os.path.abspath(root)]) != os.path.abspath(root):
        raise ValueError(f"{name!r} is outside {root}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name!r} is not in {root}: save it with DEADiff Save Tokens or copy it there")
    return path


class DEADiffSaveTokens(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id="DEADiffSaveTokens",
            display_name="DEADiff Save Tokens",
            category=CATEGORY,
            description=(
                "Saves style or content tokens as a small .safetensors in ComfyUI's output folder, with "
                "which DEADiff file made them and a hash of each reference image, so the style can be "
                "shared and re-used without the reference (DEADiff Load Style / Load Content)."
            ),
            search_aliases=["save style", "save DEADiff style", "export style"],
            is_output_node=True,
            hidden=[io.Hidden.unique_id],
            inputs=[
                io.MultiType.Input(
                    "tokens",
                    types=[DEADIFF_STYLE, DEADIFF_CONTENT],
                    tooltip=("Style or content tokens: from an encoder, a mix or a loaded file."),
                ),
                io.String.Input(
                    "filename_prefix",
                    default=f"{SUBFOLDER}/style",
                    tooltip=(
                        "Path in the output folder; a counter and .safetensors are appended. Keep it under "
                        f"'{SUBFOLDER}/' so the Load nodes list the file."
                    ),
                ),
            ],
            outputs=[
                io.String.Output(
                    display_name="tokens_file",
                    tooltip=(
                        "The saved file's name as DEADiff Load Style / Load Content list it (e.g. "
                        "'style_00001_.safetensors [output]')."
                    ),
                ),
            ],
        )

    @classmethod
    def execute(cls, tokens, filename_prefix) -> io.NodeOutput:
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory()
        )
        name = f"{filename}_{counter:05}_{EXTENSION}"
        path = os.path.join(folder, name)
        save_tokens(path, tokens)
        listed = os.path.relpath(path, _roots()[1][1]).replace(os.sep, "/") + OUTPUT_TAG
        if listed.startswith("../"):  # saved outside output/deadiff: the Load nodes do not list it
            listed = os.path.relpath(path, folder_paths.get_output_directory()).replace(os.sep, "/")
        show_on_node(cls.hidden.unique_id, f"saved {listed}")
        return io.NodeOutput(
            listed, ui={"deadiff_tokens": [{"filename": name, "subfolder": subfolder, "type": "output"}]}
        )


def show_on_node(node_id, text: str) -> None:
    """Text the front end draws on the node (the server's progress-text message, in every ComfyUI the
    pack supports). No server (a headless run): nothing to show."""
    from server import PromptServer  # ComfyUI's server module; only its running instance is used

    send = getattr(getattr(PromptServer, "instance", None), "send_progress_text", None)
    if send is not None and node_id is not None:
        send(text, node_id)


class _Load(io.ComfyNode):
    """Both load nodes; a subclass names its branch, socket type and texts."""

    NODE_ID: str
    DISPLAY_NAME: str
    SUMMARY: str
    BRANCH: str
    SOCKET: type
    OUTPUT_TOOLTIP: str

    @classmethod
    def define_schema(cls) -> io.Schema:
        return schema(
            node_id=cls.NODE_ID,
            display_name=cls.DISPLAY_NAME,
            category=CATEGORY,
            description=cls.SUMMARY,
            search_aliases=[f"load saved {cls.BRANCH}", f"saved {cls.BRANCH}", f"import {cls.BRANCH}"],
            inputs=[
                DEADIFF.Input("deadiff", tooltip="The DEADiff model the tokens are for (the one that made them)."),
                io.Combo.Input(
                    "tokens_file",
                    options=saved_token_files(),
                    tooltip=(f"A saved {cls.BRANCH} in input/{SUBFOLDER}/ or output/{SUBFOLDER}/ ([output])."),
                ),
            ],
            outputs=[cls.SOCKET.Output(display_name=cls.BRANCH, tooltip=cls.OUTPUT_TOOLTIP)],
        )

    @classmethod
    def validate_inputs(cls, tokens_file=None) -> bool | str:
        if tokens_file is None:
            return True
        try:
            resolve(tokens_file)
        except (ValueError, FileNotFoundError) as e:
            return str(e)
        return True

    @classmethod
    def fingerprint_inputs(cls, deadiff=None, tokens_file=None):
        """The file's path, time and size: a file saved again under the same name is read again."""
        path = resolve(tokens_file)
        stat = os.stat(path)
        return f"{path}:{stat.st_mtime_ns}:{stat.st_size}"

    @classmethod
    def execute(cls, deadiff, tokens_file) -> io.NodeOutput:
        path = resolve(tokens_file)
        tokens, _ = load_tokens(path)
        if tokens.branch != cls.BRANCH:
            other = "Load Style" if tokens.branch == STYLE else "Load Content"
            raise ValueError(
                f"{tokens_file} holds {tokens.branch} tokens, not {cls.BRANCH}: load it with DEADiff {other}."
            )
        if tokens.source != deadiff.fingerprint or tokens.width != deadiff.config.context_dim:
            raise ValueError(
                f"{tokens_file} was made with another DEADiff file ({tokens.source_name or 'unknown'}, "
                f"weights {tokens.source}) than {deadiff.name} (weights {deadiff.fingerprint}); "
                f"its tokens mean nothing to this model. Load {tokens.source_name or 'that file'} "
                "instead, or encode the reference image again."
            )
        return io.NodeOutput(tokens)


class DEADiffLoadStyle(_Load):
    NODE_ID = "DEADiffLoadStyle"
    DISPLAY_NAME = "DEADiff Load Style"
    SUMMARY = "Loads a style saved by DEADiff Save Tokens: the reference image is not needed."
    BRANCH = STYLE
    SOCKET = DEADIFF_STYLE
    OUTPUT_TOOLTIP = "The saved style tokens, for Apply's style input."


class DEADiffLoadContent(_Load):
    NODE_ID = "DEADiffLoadContent"
    DISPLAY_NAME = "DEADiff Load Content"
    SUMMARY = "Loads content saved by DEADiff Save Tokens: the reference image is not needed."
    BRANCH = CONTENT
    SOCKET = DEADIFF_CONTENT
    OUTPUT_TOOLTIP = "The saved content tokens, for Apply's content input."
