"""Read a DEADiff file safely and keep only what DEADiff adds to SD1.5.

Accepted: the official Lightning `deadiff_v1.ckpt`, a `.safetensors` of its state_dict, and our
compact `.safetensors` (the same official key names, DEADiff parts only, vision tower once).
A `.ckpt` is a pickle inside a zip: our unpickler only describes tensors and never imports or calls
anything the file names. Every global the pickle names is judged first (pickle_policy): one outside the
allowlist of data-only classes refuses the whole file as unsafe, naming the global and where it sits;
the allowed ones besides tensors become inert stand-ins. Only the kept tensors' records are read.
torch's legacy non-zip format is judged the same way, then read by torch's weights-only unpickler.

This module checks what a file holds and keeps DEADiff's part; opening files is tensor_files (with
checkpoint_unpickler for a .ckpt's pickle), which keys and shapes are DEADiff's is deadiff_keys.
"""

from __future__ import annotations

import hashlib
import json
from typing import Iterable

import torch

from .config import DEADiffConfig, count_layers, infer_config
from .deadiff_keys import SITE_KEYS, _impossible_dimensions, expected_shapes, first_non_finite, is_kept, is_vision
from .errors import DEADiffCheckpointError
from .sites import BRANCHES
from .tensor_files import _ZipCheckpoint, open_tensors  # noqa: F401 (_ZipCheckpoint: tests read it here)

COMPACT_FORMAT = "deadiff-compact"
COMPACT_VERSION = "1"
# Learned tensors that identify a DEADiff model's weights (see `read_deadiff_tensors`).
FINGERPRINT_KEYS = tuple(f"{b}_blip.query_tokens" for b in BRANCHES) + tuple(
    f"{b}_proj_layer.dense2.bias" for b in BRANCHES
)


# ------------------------------------------------------------------ what the file is


def _describe_foreign(path: str, keys: Iterable[str]) -> str | None:
    keys = list(keys)
    top = {k.split(".", 1)[0] for k in keys}
    if {"image_proj", "ip_adapter"} & top:
        return (
            "looks like an IP-Adapter model (image_proj / ip_adapter weights), not DEADiff. Use it with "
            "the IP-Adapter nodes; Load DEADiff Model needs deadiff_v1.ckpt (Hugging Face qth/DEADiff)"
        )
    if any(
        k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")) for k in keys
    ) and not any(k.startswith(("style_blip.", "content_blip.")) for k in keys):
        return (
            "looks like a Stable Diffusion checkpoint (UNet, VAE and text encoder, no DEADiff Q-Formers): put it "
            "in models/checkpoints and load it with Load Checkpoint; Load DEADiff Model needs deadiff_v1.ckpt "
            "(Hugging Face qth/DEADiff) in models/deadiff"
        )
    if not any(k.startswith(("style_blip.", "content_blip.")) for k in keys):
        shown = ", ".join(sorted(keys)[:3]) or "no tensors at all"
        return (
            f"is not a DEADiff model: it has none of DEADiff's keys (style_blip.*, content_blip.*, "
            f"*_proj_layer.*, attn2.i_to_k/i_to_v); it starts with {shown}"
        )
    return None


def read_deadiff_tensors(
    path: str, dtype: torch.dtype | None = None, progress=None, on_read=None
) -> tuple[dict, DEADiffConfig, dict]:
    """The kept tensors under their official names (vision tower once when both copies are equal),
    the inferred config, and the file's metadata. Floating tensors are cast to `dtype` one by one as
    they are read, so the peak memory stays near what is kept. `progress(iterable, total)` may wrap
    the reading loop (a progress bar). `on_read(done, total, nbytes)` is called after each tensor read
    from the file: `done` rises to `total` (the kept records) and never passes it, `nbytes` is the
    tensor's size as stored.

    The returned metadata also holds "weights_fingerprint": a hash of a few learned tensors rounded
    to fp16 from the file's own values, so the official .ckpt and its compact conversions (fp16 or
    fp32) agree, whatever dtype they are loaded in. Saved tokens record it."""
    path = str(path)
    mapping, metadata = open_tensors(path)
    keys = list(mapping.keys())
    foreign = _describe_foreign(path, keys)
    if foreign:
        raise DEADiffCheckpointError(path, foreign)
    if metadata.get("format") == COMPACT_FORMAT and metadata.get("format_version") != COMPACT_VERSION:
        raise DEADiffCheckpointError(
            path,
            f"is a {COMPACT_FORMAT} file of format version {metadata.get('format_version')!r}; this version "
            f"of the pack reads version {COMPACT_VERSION}: update the pack or convert deadiff_v1.ckpt again",
        )
    kept_keys = [k for k in keys if is_kept(k)]
    content_vision = {k for k in kept_keys if k.startswith("content_blip.") and is_vision(k)}
    if not any(k.startswith("style_blip.") and is_vision(k) for k in kept_keys):
        raise DEADiffCheckpointError(path, "has no vision tower (style_blip.visual_encoder.*): the file is incomplete")

    def cast(tensor):
        return tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor

    # Without a second copy (our compact file), both branches use the one tower. With one, it is
    # compared tensor by tensor in the file's own dtype and kept only if some tensor differs.
    shared = True
    digests = {}
    reads = 0

    def read(key):
        nonlocal reads
        value = mapping[key]
        if on_read is not None:
            reads += 1
            on_read(min(reads, len(kept_keys)), len(kept_keys), value.numel() * value.element_size())
        return value

    try:
        tensors = {}
        for k in (progress or (lambda it, total: it))(kept_keys, len(kept_keys)):
            if k in content_vision:
                continue
            value = read(k)
            if k in FINGERPRINT_KEYS:
                digests[k] = hashlib.sha256(value.to(torch.float16).contiguous().numpy().tobytes()).hexdigest()
            twin = k.replace("style_blip.", "content_blip.", 1)
            if content_vision and shared and k.startswith("style_blip.") and is_vision(k):
                shared = twin in content_vision and torch.equal(value, read(twin))
            tensors[k] = cast(value)
        if content_vision and shared:
            style_twins = {k.replace("style_blip.", "content_blip.", 1) for k in tensors}
            shared = content_vision <= style_twins
        if content_vision and not shared:
            tensors.update({k: cast(read(k)) for k in sorted(content_vision)})
    except DEADiffCheckpointError:
        raise
    except Exception as e:
        raise DEADiffCheckpointError(path, f"a tensor could not be read; the file is truncated or corrupt ({e})") from e
    try:
        config = infer_config({k: tuple(v.shape) for k, v in tensors.items()}, shared_vision=shared)
    except KeyError as e:
        raise DEADiffCheckpointError(path, f"is missing {e.args[0]}; {_INCOMPLETE}") from e
    except (IndexError, ValueError) as e:
        raise DEADiffCheckpointError(path, f"has DEADiff tensors of unexpected rank or size ({e}); {_CORRUPT}") from e
    expected = expected_shapes(config)
    missing = [k for k in expected if k not in tensors]
    if missing:
        raise DEADiffCheckpointError(
            path,
            f"is missing {len(missing)} DEADiff tensors, e.g. {', '.join(missing[:5])}; the file is "
            f"incomplete or from another model: {_DOWNLOAD}",
        )
    for k, shape in expected.items():
        if tuple(tensors[k].shape) != shape:
            raise DEADiffCheckpointError(
                path,
                f"tensor {k} has shape {list(tensors[k].shape)} but {list(shape)} was expected from the "
                f"file's other tensors; {_CORRUPT}",
            )
    problem = _impossible_dimensions(config)
    if problem:
        raise DEADiffCheckpointError(path, f"{problem}; {_CORRUPT}")
    for k, v in tensors.items():
        if not v.is_floating_point():
            raise DEADiffCheckpointError(
                path, f"tensor {k} has dtype {v.dtype}; DEADiff weights are floating point; {_CORRUPT}"
            )
    # The small per-site projections are checked here; the encoders' NaN/Inf show in their output
    # (checked at every encode), which spares a full pass over a gigabyte at each load.
    bad = first_non_finite((k, tensors[k]) for k in SITE_KEYS)
    if bad:
        raise DEADiffCheckpointError(path, f"tensor {bad} contains NaN or Inf values; {_CORRUPT}")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise DEADiffCheckpointError(path, f"has unexpected DEADiff tensors, e.g. {', '.join(extra[:5])}; {_CORRUPT}")
    fingerprint = hashlib.sha256("".join(digests[k] for k in FINGERPRINT_KEYS).encode()).hexdigest()[:16]
    return tensors, config, {**metadata, "weights_fingerprint": fingerprint}


_DOWNLOAD = "download deadiff_v1.ckpt again (Hugging Face qth/DEADiff)"
_CORRUPT = f"the file is corrupt or not deadiff_v1: {_DOWNLOAD}"
_INCOMPLETE = f"the file is incomplete or not deadiff_v1: {_DOWNLOAD}"


def compact_metadata(config: DEADiffConfig, source_name: str, source_sha256: str) -> dict:
    return {
        "format": COMPACT_FORMAT,
        "format_version": COMPACT_VERSION,
        "source_file": source_name,
        "source_sha256": source_sha256,
        "dims": json.dumps(config.as_metadata(), sort_keys=True),
    }


__all__ = [
    "read_deadiff_tensors",
    "expected_shapes",
    "compact_metadata",
    "open_tensors",
    "count_layers",
    "COMPACT_FORMAT",
    "COMPACT_VERSION",
    "SITE_KEYS",
]
