"""Read a DEADiff file safely and keep only what DEADiff adds to SD1.5.

Accepted: the official Lightning `deadiff_v1.ckpt`, a `.safetensors` of its state_dict, and our
compact `.safetensors` (the same official key names, DEADiff parts only, vision tower once).
A `.ckpt` is a pickle inside a zip: our unpickler only describes tensors (it never calls anything
from the file; every other class becomes an inert placeholder), and only the kept tensors' records
are read. torch's legacy non-zip format goes through torch's weights-only unpickler.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import zipfile
from typing import Iterable

import torch
from safetensors import safe_open

from .config import DEADiffConfig, count_layers, infer_config
from .errors import DEADiffCheckpointError
from .routing import BRANCHES, SITES

COMPACT_FORMAT = "deadiff-compact"
COMPACT_VERSION = "1"
# Learned tensors that identify a DEADiff model's weights (see `read_deadiff_tensors`).
FINGERPRINT_KEYS = tuple(f"{b}_blip.query_tokens" for b in BRANCHES) + tuple(
    f"{b}_proj_layer.dense2.bias" for b in BRANCHES)


# ------------------------------------------------------------------ which keys DEADiff adds

def _branch_keep(key: str, branch: str) -> bool:
    blip = f"{branch}_blip."
    if key.startswith(f"{branch}_proj_layer."):
        return True
    if not key.startswith(blip):
        return False
    rest = key[len(blip):]
    if rest.endswith("position_ids"):
        return False
    return rest == "query_tokens" or rest.startswith(("Qformer.bert.", "visual_encoder.", "ln_vision."))


SITE_KEYS = tuple(s.checkpoint_prefix + f"{p}.weight" for s in SITES for p in ("i_to_k", "i_to_v"))


def is_kept(key: str) -> bool:
    return key in SITE_KEYS or any(_branch_keep(key, b) for b in BRANCHES)


def is_vision(key: str) -> bool:
    return ".visual_encoder." in key or ".ln_vision." in key


def expected_shapes(c: DEADiffConfig) -> dict:
    """Every kept key and its shape, from the inferred dims and how the parts connect (positions =
    grid^2 + 1, cross-attention input = vision width, site input = Q-Former width): a mis-shaped tensor
    is named exactly instead of failing later inside a matmul."""
    shapes = {}
    for branch in BRANCHES:
        b = f"{branch}_blip."
        if branch == "style" or not c.shared_vision:
            v = b + "visual_encoder."
            w = c.vision_width
            grid = c.image_size // c.patch_size
            shapes.update({v + "conv1.weight": (w, 3, c.patch_size, c.patch_size), v + "class_embedding": (w,),
                           v + "positional_embedding": (grid * grid + 1, w), v + "ln_pre.weight": (w,),
                           v + "ln_pre.bias": (w,), b + "ln_vision.weight": (w,), b + "ln_vision.bias": (w,)})
            for i in range(c.vision_layers):
                r = f"{v}transformer.resblocks.{i}."
                shapes.update({r + "attn.in_proj_weight": (3 * w, w), r + "attn.in_proj_bias": (3 * w,),
                               r + "attn.out_proj.weight": (w, w), r + "attn.out_proj.bias": (w,),
                               r + "mlp.c_fc.weight": (4 * w, w), r + "mlp.c_fc.bias": (4 * w,),
                               r + "mlp.c_proj.weight": (w, 4 * w), r + "mlp.c_proj.bias": (w,)})
                for n in ("ln_1", "ln_2"):
                    shapes.update({r + n + ".weight": (w,), r + n + ".bias": (w,)})
        h, f, e = c.qformer_hidden, c.qformer_intermediate, c.vision_width  # cross-attention reads the vision tokens
        q = b + "Qformer.bert."
        shapes.update({b + "query_tokens": (1, c.num_query_tokens, h),
                       q + "embeddings.word_embeddings.weight": (c.vocab_size, h),
                       q + "embeddings.position_embeddings.weight": (c.max_positions, h),
                       q + "embeddings.LayerNorm.weight": (h,), q + "embeddings.LayerNorm.bias": (h,)})
        for i in range(c.qformer_layers):
            layer = f"{q}encoder.layer.{i}."
            for att, kv in (("attention", h), ("crossattention", e)):
                a = layer + att + "."
                shapes.update({a + "self.query.weight": (h, h), a + "self.query.bias": (h,),
                               a + "self.key.weight": (h, kv), a + "self.key.bias": (h,),
                               a + "self.value.weight": (h, kv), a + "self.value.bias": (h,),
                               a + "output.dense.weight": (h, h), a + "output.dense.bias": (h,),
                               a + "output.LayerNorm.weight": (h,), a + "output.LayerNorm.bias": (h,)})
            for suffix in ("", "_query"):
                shapes.update({layer + f"intermediate{suffix}.dense.weight": (f, h),
                               layer + f"intermediate{suffix}.dense.bias": (f,),
                               layer + f"output{suffix}.dense.weight": (h, f), layer + f"output{suffix}.dense.bias": (h,),
                               layer + f"output{suffix}.LayerNorm.weight": (h,),
                               layer + f"output{suffix}.LayerNorm.bias": (h,)})
        p = f"{branch}_proj_layer."
        shapes.update({p + "dense1.weight": (c.proj_intermediate, h), p + "dense1.bias": (c.proj_intermediate,),
                       p + "dense2.weight": (h, c.proj_intermediate), p + "dense2.bias": (h,),
                       p + "LayerNorm.weight": (h,), p + "LayerNorm.bias": (h,)})
    for s in SITES:
        for p in ("i_to_k", "i_to_v"):
            shapes[s.checkpoint_prefix + f"{p}.weight"] = (c.site_widths[s.name], c.qformer_hidden)  # reads the tokens
    return shapes


# ------------------------------------------------------------------ reading files

class _Inert:
    """Stands for any class a checkpoint's pickle names besides tensors: built from nothing, runs nothing.
    It accepts whatever pickle does to objects (state, items, being called) and ignores it."""

    origin = "a Python object"  # subclasses made by _inert() name what the pickle asked for

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Inert()

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass


_INERT_CLASSES: dict = {}


def _inert(module: str, name: str) -> type:
    """An _Inert subclass standing for `module.name`, so an error can say what the file asked for."""
    key = (str(module), str(name))
    if key not in _INERT_CLASSES:
        _INERT_CLASSES[key] = type("Inert", (_Inert,), {"origin": f"{key[0]}.{key[1]}"})
    return _INERT_CLASSES[key]


class _NotAStateDict(ValueError):
    """A readable checkpoint that holds something other than a dict of tensors."""


class _StateDict(dict):
    """collections.OrderedDict as `module.state_dict()` returns it (and Lightning saves it): pickled with
    its `_metadata` attribute as state, which a plain dict could not take. The metadata is dropped."""

    def __setstate__(self, state):
        pass


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32, "HalfStorage": torch.float16, "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8, "BoolStorage": torch.bool,
}


class _StorageType:
    def __init__(self, dtype):
        self.dtype = dtype


class _LazyTensor:
    """Where a tensor's bytes are in the checkpoint; read only when the tensor is kept."""

    def __init__(self, storage, offset, size, stride, *_):
        self.key, self.dtype = storage
        self.offset, self.shape, self.stride = offset, tuple(size), tuple(stride)


def _rebuild_parameter(data, *_):
    return data


def _rebuild_from_type(func, new_type, args, state):
    return func(*args)  # func is one of ours (see find_class): a tensor subclass is read as a plain tensor


class _CheckpointUnpickler(pickle.Unpickler):
    """Reads a torch zip checkpoint's data.pkl into dicts of _LazyTensor: tensors are described, not
    loaded, and every other class becomes an _Inert placeholder. Nothing from the file is ever called."""

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _LazyTensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if (module, name) == ("torch._tensor", "_rebuild_from_type_v2"):
            return _rebuild_from_type
        if (module, name) == ("collections", "OrderedDict"):
            return _StateDict
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        return _inert(module, name)

    def persistent_load(self, pid):
        kind, storage_type, key = pid[0], pid[1], pid[2]
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage record {pid[:2]!r}")
        return str(key), storage_type.dtype


def _flatten(tree: dict, leaf_type, prefix: str = "") -> dict:
    """{"a": {"b": t}} -> {"a.b": t}, keeping only leaves of `leaf_type` (nested files like IP-Adapter's)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, leaf_type, f"{prefix}{key}."))
        elif isinstance(value, leaf_type):
            flat[f"{prefix}{key}"] = value
    return flat


class _ZipCheckpoint:
    """A torch zip checkpoint's tensors, each read from its own record when asked for.

    Plain reads, not a memory map: only the kept tensors are ever read, and their file pages are not
    counted in the process's memory, so loading costs about the bytes we keep.
    """

    def __init__(self, path: str):
        self._zip = zipfile.ZipFile(path)
        names = self._zip.namelist()
        pkl = next((n for n in names if n.endswith("data.pkl") and n.count("/") == 1), None)
        if pkl is None:
            raise ValueError("the zip archive has no data.pkl record")
        self._prefix = pkl[: -len("data.pkl")]
        byteorder = self._prefix + "byteorder"
        if byteorder in names and self._zip.read(byteorder).strip() != b"little":
            raise ValueError("big-endian checkpoints are not supported")
        root = _CheckpointUnpickler(io.BytesIO(self._zip.read(pkl))).load()
        if isinstance(root, dict) and isinstance(root.get("state_dict"), dict):
            root = root["state_dict"]
        if not isinstance(root, dict):
            what = root.origin if isinstance(root, _Inert) else type(root).__name__
            raise _NotAStateDict(
                f"holds {what} (as a placeholder: nothing from the file was run), not a state_dict of tensors; "
                "it is not a DEADiff model: Load DEADiff Model needs deadiff_v1.ckpt (Hugging Face qth/DEADiff)")
        self._lazy = _flatten(root, _LazyTensor)

    def keys(self):
        return self._lazy.keys()

    def __contains__(self, key):
        return key in self._lazy

    def __getitem__(self, key) -> torch.Tensor:
        lazy = self._lazy[key]
        data = bytearray(self._zip.read(f"{self._prefix}data/{lazy.key}"))
        flat = torch.frombuffer(data, dtype=lazy.dtype) if data else torch.empty(0, dtype=lazy.dtype)
        tensor = torch.as_strided(flat, lazy.shape, lazy.stride, lazy.offset)
        # a view of a larger shared storage gets its own memory; otherwise the read buffer is the tensor
        return tensor.clone() if tensor.numel() * tensor.element_size() < len(data) else tensor


class _SafetensorsMapping:
    """Tensors of a .safetensors file, read one at a time on demand."""

    def __init__(self, handle):
        self._handle = handle
        self._keys = list(handle.keys())

    def keys(self):
        return self._keys

    def __contains__(self, key):
        return key in self._keys

    def __getitem__(self, key):
        return self._handle.get_tensor(key)


def _file_head(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(16)


def _looks_like_safetensors(path: str, head: bytes) -> bool:
    """By name, or by content (a renamed file): 8 bytes of header length, little-endian, then '{'."""
    return path.lower().endswith((".safetensors", ".sft")) or (
        len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < os.path.getsize(path))


def open_tensors(path: str):
    """(mapping of tensors, safetensors metadata or {}), or a DEADiffCheckpointError saying why not."""
    if not os.path.isfile(path):
        raise DEADiffCheckpointError(path, "no such file")
    size = os.path.getsize(path)
    if size == 0:
        raise DEADiffCheckpointError(path, "the file is empty (0 bytes); download it again")
    head = _file_head(path)
    if _looks_like_safetensors(path, head):
        try:
            handle = safe_open(path, framework="pt", device="cpu")
            return _SafetensorsMapping(handle), handle.metadata() or {}
        except Exception as e:
            raise DEADiffCheckpointError(
                path, f"not a readable .safetensors file; it is truncated or corrupt ({e}); download it again") from e
    if head.startswith(b"PK") and not zipfile.is_zipfile(path):
        raise DEADiffCheckpointError(
            path, "is a zip archive (as torch checkpoints are) that is truncated or corrupt: its directory is "
                  "missing; the download was probably interrupted, download it again")
    if not zipfile.is_zipfile(path) and not head.startswith(b"\x80"):  # \x80: a pickle (torch's legacy format)
        raise DEADiffCheckpointError(
            path, "not a PyTorch checkpoint (neither a torch zip archive nor a pickle); it may be truncated, "
                  "corrupt or a different kind of file; download deadiff_v1.ckpt again")
    try:
        if zipfile.is_zipfile(path):
            return _ZipCheckpoint(path), {}
        data = torch.load(path, map_location="cpu", weights_only=True)  # torch's legacy format
    except _NotAStateDict as e:
        raise DEADiffCheckpointError(path, str(e)) from e
    except pickle.UnpicklingError as e:
        refused = _refused_pickle(str(e))
        if refused:
            raise DEADiffCheckpointError(
                path, f"is a pickle that {refused}: it was refused without running anything from it. The "
                      "official deadiff_v1.ckpt is a torch zip archive of tensors; download it again from "
                      "Hugging Face qth/DEADiff. Do not open this file with torch.load(weights_only=False): a file "
                      "like this can run code on your machine") from e
        raise DEADiffCheckpointError(
            path, f"could not be read as a checkpoint; it is truncated or corrupt (UnpicklingError: {e}); "
                  "download it again") from e
    except Exception as e:
        raise DEADiffCheckpointError(
            path, f"could not be read as a checkpoint; it is truncated or corrupt ({type(e).__name__}: {e}); "
                  "download it again") from e
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict):
        raise DEADiffCheckpointError(path, f"holds a {type(data).__name__}, not a state_dict of tensors")
    return _flatten(data, torch.Tensor), {}


def _refused_pickle(message: str) -> str | None:
    """What torch's weights-only unpickler refused (a global, an opcode), or None if it was not that."""
    if "Weights only load failed" not in message:
        return None
    found = re.search(r"GLOBAL ([\w.]+)", message) or re.search(r"[Uu]nsupported global: ([\w.]+)", message)
    if found:
        return f"asks for the Python object {found.group(1)}, which is not a tensor"
    found = re.search(r"Unsupported operand (\d+)", message)
    if found:
        return f"uses pickle instruction {int(found.group(1)):#04x}, which torch's safe loader does not accept"
    return "asks for Python objects that are not tensors"


# ------------------------------------------------------------------ what the file is

def _describe_foreign(path: str, keys: Iterable[str]) -> str | None:
    keys = list(keys)
    top = {k.split(".", 1)[0] for k in keys}
    if {"image_proj", "ip_adapter"} & top:
        return ("looks like an IP-Adapter model (image_proj / ip_adapter weights), not DEADiff. Use it with "
                "the IP-Adapter nodes; Load DEADiff Model needs deadiff_v1.ckpt (Hugging Face qth/DEADiff)")
    if any(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")) for k in keys) \
            and not any(k.startswith(("style_blip.", "content_blip.")) for k in keys):
        return ("looks like a Stable Diffusion checkpoint (UNet, VAE and text encoder, no DEADiff Q-Formers): put it "
                "in models/checkpoints and load it with Load Checkpoint; Load DEADiff Model needs deadiff_v1.ckpt "
                "(Hugging Face qth/DEADiff) in models/deadiff")
    if not any(k.startswith(("style_blip.", "content_blip.")) for k in keys):
        shown = ", ".join(sorted(keys)[:3]) or "no tensors at all"
        return (f"is not a DEADiff model: it has none of DEADiff's keys (style_blip.*, content_blip.*, "
                f"*_proj_layer.*, attn2.i_to_k/i_to_v); it starts with {shown}")
    return None


def read_deadiff_tensors(path: str, dtype: torch.dtype | None = None,
                        progress=None, on_read=None) -> tuple[dict, DEADiffConfig, dict]:
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
            path, f"is a {COMPACT_FORMAT} file of format version {metadata.get('format_version')!r}; this version "
                  f"of the pack reads version {COMPACT_VERSION}: update the pack or convert deadiff_v1.ckpt again")
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
        raise DEADiffCheckpointError(
            path, f"has DEADiff tensors of unexpected rank or size ({e}); {_CORRUPT}") from e
    expected = expected_shapes(config)
    missing = [k for k in expected if k not in tensors]
    if missing:
        raise DEADiffCheckpointError(
            path, f"is missing {len(missing)} DEADiff tensors, e.g. {', '.join(missing[:5])}; the file is "
                  f"incomplete or from another model: {_DOWNLOAD}")
    for k, shape in expected.items():
        if tuple(tensors[k].shape) != shape:
            raise DEADiffCheckpointError(
                path, f"tensor {k} has shape {list(tensors[k].shape)} but {list(shape)} was expected from the "
                      f"file's other tensors; {_CORRUPT}")
    problem = _impossible_dimensions(config)
    if problem:
        raise DEADiffCheckpointError(path, f"{problem}; {_CORRUPT}")
    for k, v in tensors.items():
        if not v.is_floating_point():
            raise DEADiffCheckpointError(
                path, f"tensor {k} has dtype {v.dtype}; DEADiff weights are floating point; {_CORRUPT}")
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


def _impossible_dimensions(c: DEADiffConfig) -> str | None:
    """Dimensions that are consistent across the file's tensors but that the DEADiff encoders cannot run
    with (they would fail later with a bare ZeroDivisionError or IndexError)."""
    from .config import BERT, HEAD_WIDTH, VISION
    from .qformer import TEXT_IDS
    word_ids = max(i for ids in TEXT_IDS.values() for i in ids)
    text_length = max(len(ids) for ids in TEXT_IDS.values())
    if c.vision_width % HEAD_WIDTH:
        return (f"the vision width {c.vision_width} (from {VISION}conv1.weight) is not a multiple of {HEAD_WIDTH}, "
                "the head width of DEADiff's CLIP vision tower (1024 in deadiff_v1)")
    if c.qformer_hidden % HEAD_WIDTH:
        return (f"the Q-Former width {c.qformer_hidden} (from {BERT}embeddings.word_embeddings.weight) is not a "
                f"multiple of {HEAD_WIDTH}, the head width of DEADiff's BERT Q-Former (768 in deadiff_v1)")
    if c.vocab_size <= word_ids:
        return (f"{BERT}embeddings.word_embeddings.weight has {c.vocab_size} rows, but DEADiff asks its Q-Formers "
                f"'style' and 'content' with token ids up to {word_ids} (the bert-base-uncased vocabulary, 30523 "
                "rows in deadiff_v1)")
    if c.max_positions < text_length:
        return (f"{BERT}embeddings.position_embeddings.weight has {c.max_positions} rows; DEADiff's text needs "
                f"{text_length} (512 in deadiff_v1)")
    if c.num_query_tokens < 1 or c.image_size < 1:
        return (f"the file describes {c.num_query_tokens} query tokens and {c.image_size}-pixel images "
                "(16 and 224 in deadiff_v1)")
    return None


def _finite(t: torch.Tensor) -> bool:
    """No NaN or Inf: min and max propagate both, in one pass and without a full-size mask."""
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t.detach())
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def first_non_finite(named_tensors) -> str | None:
    """Name of the first tensor holding NaN or Inf, or None."""
    return next((name for name, t in named_tensors if t.is_floating_point() and not _finite(t)), None)


def compact_metadata(config: DEADiffConfig, source_name: str, source_sha256: str) -> dict:
    return {"format": COMPACT_FORMAT, "format_version": COMPACT_VERSION, "source_file": source_name,
            "source_sha256": source_sha256, "dims": json.dumps(config.as_metadata(), sort_keys=True)}


__all__ = ["read_deadiff_tensors", "expected_shapes", "compact_metadata", "open_tensors", "count_layers",
           "COMPACT_FORMAT", "COMPACT_VERSION", "SITE_KEYS"]
