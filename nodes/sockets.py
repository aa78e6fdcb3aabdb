"""The ComfyUI node API the pack is written against, and the pack's own socket types.

The nodes use ComfyUI's V3 schema through the pinned version module `comfy_api.v0_0_2`, which every
ComfyUI the pack supports ships (0.3.75 and later), rather than `comfy_api.latest`, whose contents
move with each release. The socket type names are a public contract: saved workflows and other packs
refer to them, so they never change.
"""

from __future__ import annotations

import dataclasses

from comfy_api.v0_0_2 import ComfyExtension, io  # noqa: F401  (ComfyExtension: for nodes/__init__.py)

CATEGORY = "DEADiff"

# the socket types, named as ComfyUI names them
DEADIFF = io.Custom("DEADIFF")  # a loaded DEADiff file (ManagedDEADiff)
DEADIFF_STYLE = io.Custom("DEADIFF_STYLE")  # style tokens (DEADiffTokens)
DEADIFF_CONTENT = io.Custom("DEADIFF_CONTENT")  # content tokens (DEADiffTokens)
DEADIFF_ROUTING = io.Custom("DEADIFF_ROUTING")  # which sites get which tokens (Routing)

# Schema fields that only newer ComfyUIs have (0.3.75's Schema has no search_aliases). Left out where
# the running ComfyUI does not know them; any other unknown field is still an error.
_NEWER_FIELDS = frozenset({"search_aliases"})


def schema(**fields) -> io.Schema:
    """io.Schema(**fields), without the newer fields this ComfyUI's Schema does not have."""
    known = {f.name for f in dataclasses.fields(io.Schema)}
    return io.Schema(**{k: v for k, v in fields.items() if k in known or k not in _NEWER_FIELDS})


def check_choice(name: str, value, options, where: str = "") -> bool | str:
    """Queue-time check of a list input: True, or ComfyUI's "Value not in list" with what to do.

    Declaring an input in validate_inputs replaces ComfyUI's own list check for it, and ComfyUI 0.3.75
    does not check V3 lists at all; so the nodes check their lists themselves, the same on every version.
    """
    if value is None or value in options:  # None: linked from another node, checked when it runs
        return True
    listed = ", ".join(repr(o) for o in options[:20]) + (", ..." if len(options) > 20 else "")
    return f"Value not in list: {name} {value!r} is not one of [{listed}]{where}"
