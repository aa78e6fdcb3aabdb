"""Open a checkpoint file as a mapping of tensor names to tensors, each read only when asked for.

Tells the kinds of file apart by their content (a renamed file still opens): `.safetensors` (ours or a
converted state_dict), torch's zip checkpoint (read record by record through the describe-only
unpickler), torch's legacy non-zip format (judged by the same policy, then read by torch's weights-only
loader). A damaged, unsafe or foreign file gets a DEADiffCheckpointError saying what is wrong and what
to do about it.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import re
import zipfile

import torch
from safetensors import safe_open

from . import pickle_policy
from .checkpoint_unpickler import _Inert, _LazyTensor, _load_pickle, _NotAStateDict, _UnsafePickle
from .errors import DEADiffCheckpointError, DEADiffUnsafeFileError


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
