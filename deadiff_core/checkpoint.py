"""Read a DEADiff file safely and keep only what DEADiff adds to SD1.5.

Accepted: the official Lightning `deadiff_v1.ckpt`, a `.safetensors` of its state_dict, and our
compact `.safetensors` (the same official key names, DEADiff parts only, vision tower once).
A `.ckpt` is a pickle inside a zip: our unpickler only describes tensors and never imports or calls
anything the file names. Every global the pickle names is judged first (pickle_policy): one outside the
allowlist of data-only classes refuses the whole file as unsafe, naming the global and where it sits;
the allowed ones besides tensors become inert stand-ins. Only the kept tensors' records are read.
torch's legacy non-zip format is judged the same way, then read by torch's weights-only unpickler.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import pickletools
import re
import zipfile
from typing import Iterable

import torch
from safetensors import safe_open

from .config import DEADiffConfig, count_layers, infer_config
from . import pickle_policy
from .errors import DEADiffCheckpointError, DEADiffUnsafeFileError
from .sites import BRANCHES, SITES

COMPACT_FORMAT = "deadiff-compact"
COMPACT_VERSION = "1"
# Learned tensors that identify a DEADiff model's weights (see `read_deadiff_tensors`).
FINGERPRINT_KEYS = tuple(f"{b}_blip.query_tokens" for b in BRANCHES) + tuple(
    f"{b}_proj_layer.dense2.bias" for b in BRANCHES
)


# ------------------------------------------------------------------ which keys DEADiff adds


def _branch_keep(key: str, branch: str) -> bool:
    blip = f"{branch}_blip."
    if key.startswith(f"{branch}_proj_layer."):
        return True
    if not key.startswith(blip):
        return False
    rest = key[len(blip) :]
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
            shapes.update(
                {
                    v + "conv1.weight": (w, 3, c.patch_size, c.patch_size),
                    v + "class_embedding": (w,),
                    v + "positional_embedding": (grid * grid + 1, w),
                    v + "ln_pre.weight": (w,),
                    v + "ln_pre.bias": (w,),
                    b + "ln_vision.weight": (w,),
                    b + "ln_vision.bias": (w,),
                }
            )
            for i in range(c.vision_layers):
                r = f"{v}transformer.resblocks.{i}."
                shapes.update(
                    {
                        r + "attn.in_proj_weight": (3 * w, w),
                        r + "attn.in_proj_bias": (3 * w,),
                        r + "attn.out_proj.weight": (w, w),
                        r + "attn.out_proj.bias": (w,),
                        r + "mlp.c_fc.weight": (4 * w, w),
                        r + "mlp.c_fc.bias": (4 * w,),
                        r + "mlp.c_proj.weight": (w, 4 * w),
                        r + "mlp.c_proj.bias": (w,),
                    }
                )
                for n in ("ln_1", "ln_2"):
                    shapes.update({r + n + ".weight": (w,), r + n + ".bias": (w,)})
        h, f, e = c.qformer_hidden, c.qformer_intermediate, c.vision_width  # cross-attention reads the vision tokens
        q = b + "Qformer.bert."
        shapes.update(
            {
                b + "query_tokens": (1, c.num_query_tokens, h),
                q + "embeddings.word_embeddings.weight": (c.vocab_size, h),
                q + "embeddings.position_embeddings.weight": (c.max_positions, h),
                q + "embeddings.LayerNorm.weight": (h,),
                q + "embeddings.LayerNorm.bias": (h,),
            }
        )
        for i in range(c.qformer_layers):
            layer = f"{q}encoder.layer.{i}."
            for att, kv in (("attention", h), ("crossattention", e)):
                a = layer + att + "."
                shapes.update(
                    {
                        a + "self.query.weight": (h, h),
                        a + "self.query.bias": (h,),
                        a + "self.key.weight": (h, kv),
                        a + "self.key.bias": (h,),
                        a + "self.value.weight": (h, kv),
                        a + "self.value.bias": (h,),
                        a + "output.dense.weight": (h, h),
                        a + "output.dense.bias": (h,),
                        a + "output.LayerNorm.weight": (h,),
                        a + "output.LayerNorm.bias": (h,),
                    }
                )
            for suffix in ("", "_query"):
                shapes.update(
                    {
                        layer + f"intermediate{suffix}.dense.weight": (f, h),
                        layer + f"intermediate{suffix}.dense.bias": (f,),
                        layer + f"output{suffix}.dense.weight": (h, f),
                        layer + f"output{suffix}.dense.bias": (h,),
                        layer + f"output{suffix}.LayerNorm.weight": (h,),
                        layer + f"output{suffix}.LayerNorm.bias": (h,),
                    }
                )
        p = f"{branch}_proj_layer."
        shapes.update(
            {
                p + "dense1.weight": (c.proj_intermediate, h),
                p + "dense1.bias": (c.proj_intermediate,),
                p + "dense2.weight": (h, c.proj_intermediate),
                p + "dense2.bias": (h,),
                p + "LayerNorm.weight": (h,),
                p + "LayerNorm.bias": (h,),
            }
        )
    for s in SITES:
        for p in ("i_to_k", "i_to_v"):
            shapes[s.checkpoint_prefix + f"{p}.weight"] = (c.site_widths[s.name], c.qformer_hidden)  # reads the tokens
    return shapes


# ------------------------------------------------------------------ reading files


class _Inert:
    """Stands for an allowed class a checkpoint's pickle names besides tensors: built from nothing, runs
    nothing. It takes whatever pickle does to objects (arguments, items, state, being called) and only
    keeps it, so that a refused object nested inside can be found by its key (see `_key_path`)."""

    origin = "a Python object"  # subclasses made by _stand_in() name what the pickle asked for
    refused = None  # a pickle_policy.Verdict on stand-ins for refused globals

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        object.__setattr__(self, "_parts", [args, kwargs])
        return self

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return type(self)(*args, **kwargs)

    def __setstate__(self, state):
        self._parts.append(state)

    def __setattr__(self, name, value):  # never a real attribute: nothing can replace __setstate__
        self._parts.append({name: value})

    def __setitem__(self, key, value):
        self._parts.append({key: value})

    def append(self, item):
        self._parts.append([item])

    def extend(self, items):
        self._parts.append(list(items))


_STAND_INS: dict = {}


def _stand_in(name: str, refused=None) -> type:
    """An _Inert subclass standing for the global `name`, so an error can say what the file asked for."""
    key = (name, refused)
    if key not in _STAND_INS:
        _STAND_INS[key] = type("Inert", (_Inert,), {"origin": name, "refused": refused})
    return _STAND_INS[key]


class _NotAStateDict(ValueError):
    """A readable checkpoint that holds something other than a dict of tensors."""


class _UnsafePickle(Exception):
    """A pickle naming globals that pickle_policy refuses; `where` says where the first one sits."""

    def __init__(self, verdicts: list, where: str):
        super().__init__(verdicts[0].name)
        self.verdict, self.where = verdicts[0], where
        self.others = sorted({v.name for v in verdicts} - {verdicts[0].name})


class _StateDict(dict):
    """collections.OrderedDict as `module.state_dict()` returns it (and Lightning saves it): pickled with
    its `_metadata` attribute as state, which a plain dict could not take. The state is kept aside,
    never used: only searched for refused objects."""

    def __setstate__(self, state):
        self.__dict__.setdefault("states", []).append(state)


_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "DoubleStorage": torch.float64,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
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


# The allowed globals that we read (tensor records); every other allowed one becomes an _Inert stand-in.
_TENSOR_RECORDS = {
    "torch._utils._rebuild_tensor_v2": _LazyTensor,
    "torch._utils._rebuild_tensor": _LazyTensor,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type,
    "collections.OrderedDict": _StateDict,
    **{f"torch.{name}": _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
    **{f"torch.cuda.{name}": _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
}


class _CheckpointUnpickler(pickle.Unpickler):
    """Reads a checkpoint's pickle into dicts of _LazyTensor: tensors are described, not loaded, other
    allowed classes become _Inert stand-ins, and a global pickle_policy refuses is recorded (and stood
    in for, so the key it sits under can be told). Nothing from the file is ever imported or called."""

    def __init__(self, file):
        super().__init__(file)
        self.refused: list = []

    def find_class(self, module, name):
        verdict = pickle_policy.judge(module, name)
        if verdict is not None:
            self.refused.append(verdict)
            return _stand_in(verdict.name, verdict)
        full = pickle_policy.qualified(module, name)
        return _TENSOR_RECORDS.get(full) or _stand_in(full)

    def persistent_load(self, pid):
        kind, storage_type, key = pid[0], pid[1], pid[2]
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage record {pid[:2]!r}")
        return str(key), storage_type.dtype


def _refused_in(item) -> bool:
    if isinstance(item, type):
        return issubclass(item, _Inert) and item.refused is not None
    return isinstance(item, _Inert) and item.refused is not None


def _key_path(root, name: str) -> str | None:
    """Where in the loaded tree a stand-in for the refused global `name` sits, as `a.b[2].c`."""
    stack, seen = [(root, "")], set()
    while stack:
        item, path = stack.pop()
        if _refused_in(item):
            if item.refused.name == name:
                return path or "(the whole file)"
            continue
        if id(item) in seen or isinstance(item, (str, bytes, int, float, type)):
            continue
        seen.add(id(item))
        children = []
        if isinstance(item, dict):
            for key, value in item.items():
                label = key.origin if isinstance(key, type) and issubclass(key, _Inert) else str(key)
                child = f"{path}.{label}" if path else label
                children += [(key, f"{child} (the key itself)"), (value, child)]
            if isinstance(item, _StateDict):  # its pickled attributes, {"_metadata": ...}
                children += [(state, path) for state in item.__dict__.get("states", [])]
        elif isinstance(item, (list, tuple, set, frozenset)):
            children = [(value, f"{path}[{i}]") for i, value in enumerate(item)]
        elif isinstance(item, _Inert):
            parts = object.__getattribute__(item, "_parts")
            children = [(part, path) for part in parts]
        stack.extend(reversed(children))
    return None


def _load_pickle(file, data_of, member: str, base: int = 0):
    """Unpickle one pickle of a checkpoint with _CheckpointUnpickler; a refused global raises
    _UnsafePickle naming it, where it sits (`member`, byte offset, opcode from `data_of()`, the pickle's
    bytes) and under which key. Other failures propagate."""
    unpickler = _CheckpointUnpickler(file)
    root, failure = None, None
    try:
        root = unpickler.load()
    except Exception as e:
        failure = e
    refused = unpickler.refused
    if not refused and failure is not None:
        extension = next(
            ((n, pos, op) for n, pos, op in pickle_policy.globals_in(data_of()) if op.startswith("EXT")), None
        )
        if extension is None:
            raise failure
        refused = [pickle_policy.Verdict(extension[0], pickle_policy.NOT_ALLOWED)]
    if refused:
        first = next((v for v in refused if v.reason == pickle_policy.CAN_RUN_CODE), refused[0])
        refused = [first] + [v for v in refused if v != first]
        found = pickle_policy.locate(data_of(), first.name)
        where = f"in {member}" + (f" at byte {base + found[0]} ({found[1]})" if found else "")
        key = _key_path(root, first.name) if failure is None else None
        if key:
            where += f", under the key {key}"
        raise _UnsafePickle(refused, where) from failure
    return root


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
        data = self._zip.read(pkl)
        root = _load_pickle(io.BytesIO(data), lambda: data, f"the archive member {pkl}")
        if isinstance(root, dict) and isinstance(root.get("state_dict"), dict):
            root = root["state_dict"]
        if not isinstance(root, dict):
            what = root.origin if isinstance(root, _Inert) else type(root).__name__
            raise _NotAStateDict(
                f"holds {what} (as a placeholder: nothing from the file was run), not a state_dict of tensors; "
                "it is not a DEADiff model: Load DEADiff Model needs deadiff_v1.ckpt (Hugging Face qth/DEADiff)"
            )
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
        len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < os.path.getsize(path)
    )


# A pickle's first byte: PROTO (0x80) for protocols 2-5, any opcode for protocols 0 and 1.
_PICKLE_FIRST_BYTES = {op.code.encode("latin-1") for op in pickletools.opcodes}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch's legacy format starts with a pickle of this number
_LEGACY_PICKLES = ("the magic number", "the format version", "the system info", "the data")
_SCAN_LIMIT = 64 << 20  # bytes of a non-zip pickle read again to say where a refused name sits


def _check_plain_pickles(path: str) -> bool:
    """Judge every global of a file that is not a zip: torch's legacy format (pickles of the magic
    number, format version, system info and the data, then raw storages) or a bare pickle, with the
    same unpickler and policy as a zip's data.pkl. Raises _UnsafePickle; returns whether the file is
    torch's legacy format (which torch's weights-only loader then reads)."""
    with open(path, "rb") as f:
        for index, what in enumerate(_LEGACY_PICKLES):
            start = f.tell()

            def data_of(start=start):
                f.seek(start)
                return f.read(_SCAN_LIMIT)

            try:
                member = (
                    f"pickle {index + 1} of the file ({what} of torch's legacy format)"
                    if index
                    else "the pickle at the start of the file"
                )
                value = _load_pickle(f, data_of, member, base=start)
            except _UnsafePickle:
                raise
            except Exception:  # damaged: torch's loader says so
                return index > 0
            if index == 0 and value != _LEGACY_MAGIC:
                return False  # a bare pickle, judged whole
    return True


def _unsafe_file_error(path: str, e: _UnsafePickle) -> DEADiffUnsafeFileError:
    name, reason = e.verdict
    why = (
        "which can run code, touch your files or reach the network"
        if reason == pickle_policy.CAN_RUN_CODE
        else "which is not one of the data-only objects a DEADiff checkpoint holds (tensors, OrderedDict and the "
        "training records Lightning and OmegaConf save)"
    )
    more = f" (and {len(e.others)} more: {', '.join(e.others[:3])})" if e.others else ""
    return DEADiffUnsafeFileError(
        path,
        f"is unsafe: its pickle names {name}, {why}, {e.where}{more}. The file was refused and nothing "
        "from it was run. Delete it and download deadiff_v1.ckpt again (Hugging Face qth/DEADiff); do not "
        "open it with torch.load(weights_only=False) and do not share it",
        global_name=name,
        reason=reason,
        where=e.where,
    )


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
                path, f"not a readable .safetensors file; it is truncated or corrupt ({e}); download it again"
            ) from e
    if head.startswith(b"PK") and not zipfile.is_zipfile(path):
        raise DEADiffCheckpointError(
            path,
            "is a zip archive (as torch checkpoints are) that is truncated or corrupt: its directory is "
            "missing; the download was probably interrupted, download it again",
        )
    is_zip = zipfile.is_zipfile(path)
    not_a_checkpoint = DEADiffCheckpointError(
        path,
        "not a PyTorch checkpoint (neither a torch zip archive nor a pickle); it may be truncated, "
        "corrupt or a different kind of file; download deadiff_v1.ckpt again",
    )
    if not is_zip and head[:1] not in _PICKLE_FIRST_BYTES:
        raise not_a_checkpoint
    try:
        if is_zip:
            return _ZipCheckpoint(path), {}
        if not _check_plain_pickles(path):  # a pickle, but neither torch's zip nor its legacy format
            raise not_a_checkpoint
        data = torch.load(path, map_location="cpu", weights_only=True)  # torch's legacy format
    except DEADiffCheckpointError:
        raise
    except _UnsafePickle as e:
        raise _unsafe_file_error(path, e) from None  # nothing of the refused file's own errors matters
    except _NotAStateDict as e:
        raise DEADiffCheckpointError(path, str(e)) from e
    except pickle.UnpicklingError as e:
        refused = _refused_pickle(str(e))
        if refused:
            raise DEADiffCheckpointError(
                path,
                f"is a pickle that {refused}: it was refused without running anything from it. The "
                "official deadiff_v1.ckpt is a torch zip archive of tensors; download it again from "
                "Hugging Face qth/DEADiff. Do not open this file with torch.load(weights_only=False): a file "
                "like this can run code on your machine",
            ) from e
        raise DEADiffCheckpointError(
            path,
            f"could not be read as a checkpoint; it is truncated or corrupt (UnpicklingError: {e}); download it again",
        ) from e
    except Exception as e:
        raise DEADiffCheckpointError(
            path,
            f"could not be read as a checkpoint; it is truncated or corrupt ({type(e).__name__}: {e}); "
            "download it again",
        ) from e
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


def _impossible_dimensions(c: DEADiffConfig) -> str | None:
    """Dimensions that are consistent across the file's tensors but that the DEADiff encoders cannot run
    with (they would fail later with a bare ZeroDivisionError or IndexError)."""
    from .config import BERT, HEAD_WIDTH, VISION
    from .qformer import TEXT_IDS

    word_ids = max(i for ids in TEXT_IDS.values() for i in ids)
    text_length = max(len(ids) for ids in TEXT_IDS.values())
    if c.vision_width % HEAD_WIDTH:
        return (
            f"the vision width {c.vision_width} (from {VISION}conv1.weight) is not a multiple of {HEAD_WIDTH}, "
            "the head width of DEADiff's CLIP vision tower (1024 in deadiff_v1)"
        )
    if c.qformer_hidden % HEAD_WIDTH:
        return (
            f"the Q-Former width {c.qformer_hidden} (from {BERT}embeddings.word_embeddings.weight) is not a "
            f"multiple of {HEAD_WIDTH}, the head width of DEADiff's BERT Q-Former (768 in deadiff_v1)"
        )
    if c.vocab_size <= word_ids:
        return (
            f"{BERT}embeddings.word_embeddings.weight has {c.vocab_size} rows, but DEADiff asks its Q-Formers "
            f"'style' and 'content' with token ids up to {word_ids} (the bert-base-uncased vocabulary, 30523 "
            "rows in deadiff_v1)"
        )
    if c.max_positions < text_length:
        return (
            f"{BERT}embeddings.position_embeddings.weight has {c.max_positions} rows; DEADiff's text needs "
            f"{text_length} (512 in deadiff_v1)"
        )
    if c.num_query_tokens < 1 or c.image_size < 1:
        return (
            f"the file describes {c.num_query_tokens} query tokens and {c.image_size}-pixel images "
            "(16 and 224 in deadiff_v1)"
        )
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
