"""A describe-only unpickler for the pickle inside a torch checkpoint (`data.pkl` of the zip, or the pickles
of torch's legacy format).

A `.ckpt` is untrusted data: this unpickler never imports or calls anything the file names. Every global
the pickle names is judged first (pickle_policy): one outside the allowlist refuses the whole file, and
the error says which global and where it sits (member, byte offset, key). Tensors become records of where
their bytes are (_LazyTensor), read later only when kept; the other allowed classes become inert stand-ins.
"""

from __future__ import annotations

import pickle

import torch

from . import pickle_policy


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
