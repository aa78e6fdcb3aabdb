"""Save a style or content as a small .safetensors, and load it back without the reference image.

Saved to ComfyUI's output folder (output/deadiff/ by default); loaded from input/deadiff/ or
output/deadiff/. A file records which DEADiff weights made it, and loading refuses it for others:
tokens only mean something to the site projections of the model whose Q-Former produced them.
"""
from __future__ import annotations

import os

import folder_paths

from ..deadiff_core.embedding import load_tokens, save_tokens
from ..deadiff_core.routing import CONTENT, STYLE
from .loader import CATEGORY

SUBFOLDER = "deadiff"
EXTENSION = ".safetensors"
OUTPUT_TAG = " [output]"


def _roots() -> list[tuple[str, str]]:
    return [("", os.path.join(folder_paths.get_input_directory(), SUBFOLDER)),
            (OUTPUT_TAG, os.path.join(folder_paths.get_output_directory(), SUBFOLDER))]


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
    relative = name[:-len(tag)] if tag else name
    path = os.path.abspath(os.path.join(root, relative))
    if os.path.commonpath([path, os.path.abspath(root)]) != os.path.abspath(root):
        raise ValueError(f"{name!r} is outside {root}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name!r} is not in {root}: save it with DEADiff Save Tokens or copy it there")
    return path


class DEADiffSaveTokens:
    DESCRIPTION = ("Saves style or content tokens as a small .safetensors in ComfyUI's output folder, with "
                   "which DEADiff file made them and a hash of each reference image, so the style can be "
                   "shared and re-used without the reference (DEADiff Load Style / Load Content).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "tokens": ("DEADIFF_STYLE,DEADIFF_CONTENT", {
                "tooltip": "Style or content tokens: from an encoder, a mix or a loaded file."}),
            "filename_prefix": ("STRING", {
                "default": f"{SUBFOLDER}/style",
                "tooltip": "Path in the output folder; a counter and .safetensors are appended. Keep it under "
                           f"'{SUBFOLDER}/' so the Load nodes list the file."}),
        }}

    def save(self, tokens, filename_prefix):
        folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
            filename_prefix, folder_paths.get_output_directory())
        name = f"{filename}_{counter:05}_{EXTENSION}"
        save_tokens(os.path.join(folder, name), tokens)
        return {"ui": {"deadiff_tokens": [{"filename": name, "subfolder": subfolder, "type": "output"}]}}


class _Load:
    BRANCH: str
    CATEGORY = CATEGORY
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "deadiff": ("DEADIFF", {"tooltip": "The DEADiff model the tokens are for (the one that made them)."}),
            "tokens_file": (saved_token_files(), {
                "tooltip": f"A saved {cls.BRANCH} in input/{SUBFOLDER}/ or output/{SUBFOLDER}/ ([output])."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, tokens_file=None):
        if tokens_file is None:
            return True
        try:
            resolve(tokens_file)
        except (ValueError, FileNotFoundError) as e:
            return str(e)
        return True

    @classmethod
    def IS_CHANGED(cls, deadiff, tokens_file):
        path = resolve(tokens_file)
        stat = os.stat(path)
        return f"{path}:{stat.st_mtime_ns}:{stat.st_size}"

    def load(self, deadiff, tokens_file):
        path = resolve(tokens_file)
        tokens, _ = load_tokens(path)
        if tokens.branch != self.BRANCH:
            other = "Load Style" if tokens.branch == STYLE else "Load Content"
            raise ValueError(f"{tokens_file} holds {tokens.branch} tokens, not {self.BRANCH}: load it with "
                             f"DEADiff {other}.")
        if tokens.source != deadiff.fingerprint or tokens.width != deadiff.config.context_dim:
            raise ValueError(f"{tokens_file} was made with another DEADiff file ({tokens.source_name or 'unknown'}, "
                             f"weights {tokens.source}) than {deadiff.name} (weights {deadiff.fingerprint}); "
                             f"its tokens mean nothing to this model. Load {tokens.source_name or 'that file'} "
                             "instead, or encode the reference image again.")
        return (tokens,)


class DEADiffLoadStyle(_Load):
    DESCRIPTION = "Loads a style saved by DEADiff Save Tokens: the reference image is not needed."
    BRANCH = STYLE
    RETURN_TYPES = ("DEADIFF_STYLE",)
    RETURN_NAMES = ("style",)
    OUTPUT_TOOLTIPS = ("The saved style tokens, for Apply's style input.",)


class DEADiffLoadContent(_Load):
    DESCRIPTION = "Loads content saved by DEADiff Save Tokens: the reference image is not needed."
    BRANCH = CONTENT
    RETURN_TYPES = ("DEADIFF_CONTENT",)
    RETURN_NAMES = ("content",)
    OUTPUT_TOOLTIPS = ("The saved content tokens, for Apply's content input.",)
