"""Which Python objects a checkpoint's pickle may name, and where in the pickle a name sits.

A pickle reaches a callable only by naming a global (`module.name`): the GLOBAL, STACK_GLOBAL and INST
opcodes name one, and the EXT codes look one up in a per-process registry. Everything else a pickle can
do (REDUCE, BUILD with __setstate__, NEWOBJ, OBJ, persistent ids) only calls objects it got that way.
So our unpickler asks `judge` about every global before anything is built, and no global from the file
is ever imported or called: the allowed ones become our own inert stand-ins (see checkpoint_unpickler.py).

ALLOWED holds what real DEADiff / Lightning / LDM checkpoints name, and nothing else:
- torch's tensor records: the storage types, the rebuild functions of `torch.save`, dtypes, Size,
  device, Parameter (in `state_dict` and in `optimizer_states`);
- `collections.OrderedDict` (every `module.state_dict()`), `collections.defaultdict` (Lightning's
  `loops` progress records);
- what pytorch_lightning writes besides tensors: its `ModelCheckpoint` class (Lightning 1.x keyed
  `callbacks` by the class), its `AttributeDict` hyper-parameter container (1.x wrote it as is),
  and the OmegaConf classes of an LDM-style config in `hyper_parameters` / `hparams_type`
  (DictConfig, ListConfig, their metadata, value nodes, and the `typing.Any` and builtins types that
  metadata records as annotations);
- the numpy scalar records (`numpy.core.multiarray.scalar`, `numpy.dtype`, `_codecs.encode` for
  their bytes) that Lightning 1.x left in ModelCheckpoint's `best_model_score`.
These were read off checkpoints written by pytorch_lightning itself (tests/test_lightning_checkpoint.py
writes one and lists its globals) and off torch's own weights-only list.

DENIED holds module families and builtins that can run code, reach the system or load another pickle.
It wins over ALLOWED, so a future allowlist entry cannot open a way to them.
"""

from __future__ import annotations

import _compat_pickle
import copyreg
import pickletools
from typing import NamedTuple

import torch

_STORAGES = (
    "Double",
    "Float",
    "Half",
    "BFloat16",
    "Long",
    "Int",
    "Short",
    "Char",
    "Byte",
    "Bool",
    "ComplexFloat",
    "ComplexDouble",
    "QInt8",
    "QUInt8",
    "QInt32",
    "QUInt4x2",
    "QUInt2x4",
)
_DTYPES = tuple(name for name in dir(torch) if isinstance(getattr(torch, name, None), torch.dtype))

ALLOWED = frozenset(
    [f"torch.{s}Storage" for s in _STORAGES]
    + [f"torch.cuda.{s}Storage" for s in _STORAGES]
    + [f"torch.{d}" for d in _DTYPES]
    + [
        "torch.Size",
        "torch.device",
        "torch.nn.parameter.Parameter",
        "torch.serialization._get_layout",
        "torch._utils._rebuild_tensor",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "torch._tensor._rebuild_from_type_v2",
        "collections.OrderedDict",
        "collections.defaultdict",
        # pytorch_lightning 1.x and 2.x (also as the `lightning` package)
        "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
        "lightning.pytorch.callbacks.model_checkpoint.ModelCheckpoint",
        "pytorch_lightning.utilities.parsing.AttributeDict",
        "lightning_fabric.utilities.data.AttributeDict",
        "lightning.fabric.utilities.data.AttributeDict",
        # OmegaConf configs as Lightning saves them in hyper_parameters
        "omegaconf.dictconfig.DictConfig",
        "omegaconf.listconfig.ListConfig",
        "omegaconf.base.ContainerMetadata",
        "omegaconf.base.Metadata",
        "omegaconf.nodes.AnyNode",
        "omegaconf.nodes.StringNode",
        "omegaconf.nodes.IntegerNode",
        "omegaconf.nodes.FloatNode",
        "omegaconf.nodes.BooleanNode",
        "typing.Any",
        "builtins.dict",
        "builtins.list",
        "builtins.tuple",
        "builtins.set",
        "builtins.frozenset",
        "builtins.int",
        "builtins.float",
        "builtins.str",
        "builtins.bool",
        "builtins.bytes",
        "builtins.bytearray",
        "builtins.complex",
        "builtins.object",
        # numpy scalars of Lightning 1.x's ModelCheckpoint records
        "numpy.core.multiarray.scalar",
        "numpy._core.multiarray.scalar",
        "numpy.dtype",
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray._reconstruct",
        "numpy.ndarray",
        "_codecs.encode",
    ]
)

# Module families (the module itself and everything under it) that can run code, reach the system,
# the network or another pickle.
DENIED_MODULES = (
    "os",
    "posix",
    "nt",
    "posixpath",
    "ntpath",
    "subprocess",
    "_posixsubprocess",
    "sys",
    "shutil",
    "socket",
    "_socket",
    "ssl",
    "select",
    "selectors",
    "importlib",
    "imp",
    "zipimport",
    "pkgutil",
    "runpy",
    "site",
    "pty",
    "tty",
    "webbrowser",
    "pickle",
    "_pickle",
    "pickletools",
    "copyreg",
    "shelve",
    "marshal",
    "types",
    "ctypes",
    "_ctypes",
    "cffi",
    "code",
    "codeop",
    "compileall",
    "py_compile",
    "functools",
    "_functools",
    "operator",
    "_operator",
    "io",
    "_io",
    "pathlib",
    "tempfile",
    "glob",
    "fileinput",
    "multiprocessing",
    "concurrent",
    "threading",
    "_thread",
    "signal",
    "asyncio",
    "http",
    "urllib",
    "urllib3",
    "requests",
    "ftplib",
    "smtplib",
    "telnetlib",
    "xmlrpc",
    "aiohttp",
    "pip",
    "setuptools",
    "distutils",
    "ensurepip",
    "venv",
    "pydoc",
    "inspect",
    "ast",
    "dis",
    "timeit",
    "profile",
    "cProfile",
    "pdb",
    "bdb",
    "trace",
    "doctest",
    "idlelib",
    "test",
    "platform",
    "uuid",
    "logging",
    "gc",
    "weakref",
    "dill",
    "cloudpickle",
    "joblib",
    "_osx_support",
    "_aix_support",
    "_pyrepl",
    "_winapi",
    "msvcrt",
    "winreg",
    "torch.hub",
    "torch.load",
    "torch.save",
    "torch.serialization.load",
    "torch.jit",
    "torch.package",
    "torch.utils.cpp_extension",
    "torch.utils.collect_env",
    "torch.utils.data",
    "torch._C",
    "torch.ops",
    "torch._dynamo",
    "torch._inductor",
    "torch.fx",
    "torch.compile",
    "torch.utils._config_module",
    "numpy.load",
    "numpy.lib.npyio",
    "numpy.f2py",
    "numpy.testing",
    "numpy.distutils",
    "numpy.ctypeslib",
)
# Builtins that run or compile code, reach attributes by name, import, or open files.
DENIED_BUILTINS = frozenset(
    (
        "eval",
        "exec",
        "execfile",
        "compile",
        "getattr",
        "setattr",
        "delattr",
        "__import__",
        "__build_class__",
        "open",
        "file",
        "input",
        "raw_input",
        "breakpoint",
        "globals",
        "locals",
        "vars",
        "help",
        "exit",
        "quit",
        "apply",
        "reload",
        "type",
        "memoryview",
        "classmethod",
        "staticmethod",
        "property",
        "super",
    )
)

CAN_RUN_CODE = "can run code"
NOT_ALLOWED = "not data-only"


class Verdict(NamedTuple):
    """A refused global: its full name (as a real unpickler would import it) and why."""

    name: str
    reason: str  # CAN_RUN_CODE or NOT_ALLOWED


def qualified(module: str, name: str) -> str:
    """`module.name` as `pickle.load` would import it: Python 2 names (`__builtin__.long`, `copy_reg`,
    `commands`) mapped to their Python 3 homes, as the unpickler does for protocols 0-2."""
    module, name = str(module), str(name)
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return f"{module}.{name}"


def _in_family(full: str, family: str) -> bool:
    return full == family or full.startswith(family + ".")


def judge(module: str, name: str) -> Verdict | None:
    """None if the global is one of ALLOWED (and not denied), else why it is refused."""
    names = {qualified(module, name), f"{module}.{name}"}  # the mapped and the raw spelling
    for full in sorted(names):
        if any(_in_family(full, family) for family in DENIED_MODULES):
            return Verdict(full, CAN_RUN_CODE)
        if full.startswith("builtins.") and full.split(".")[1] in DENIED_BUILTINS:
            return Verdict(full, CAN_RUN_CODE)
        if full.startswith("builtins.") and full.split(".")[1].startswith("_"):
            return Verdict(full, CAN_RUN_CODE)
    full = qualified(module, name)
    return None if full in ALLOWED else Verdict(full, NOT_ALLOWED)


def extension_name(code: int) -> str:
    """What pickle's EXT1/EXT2/EXT4 `code` names in this process (copyreg's extension registry)."""
    found = copyreg._inverted_registry.get(code)  # the registry copyreg.add_extension fills
    return qualified(*found) if found else f"extension code {code}"


_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}


def globals_in(data: bytes, start: int = 0) -> list[tuple[str, int, str]]:
    """Every global a pickle names, in file order: (full name, byte offset of its opcode, opcode).
    Read statically (pickletools), to say where a refused name sits; a damaged tail ends the list."""
    found, memo, strings = [], {}, []
    memo_keys: set = set()  # every memo slot, string or not: MEMOIZE fills slot len(memo)
    last = None
    try:
        for op, arg, pos in pickletools.genops(memoryview(data)[start:] if start else data):
            where = start + pos
            if op.name in ("GLOBAL", "INST"):
                module, _, name = str(arg).partition(" ")
                found.append((qualified(module, name), where, op.name))
            elif op.name in ("EXT1", "EXT2", "EXT4"):
                found.append((extension_name(arg), where, op.name))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                found.append((qualified(strings[-2], strings[-1]), where, op.name))
            if op.name in _STRING_OPS:
                strings.append(str(arg))
                last = str(arg)
            elif op.name in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
                slot = len(memo_keys) if op.name == "MEMOIZE" else arg
                memo_keys.add(slot)
                if last is not None:
                    memo[slot] = last
            elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                last = memo.get(arg)
                if last is not None:
                    strings.append(last)
            else:
                last = None
            if op.name == "STOP":
                break
    except Exception:  # a damaged or hostile tail: what was read so far stands
        pass
    return found


def locate(data: bytes, name: str, start: int = 0) -> tuple[int, str] | None:
    """(byte offset, opcode) of the first place the pickle names `name`, or None if not found statically."""
    return next(((pos, op) for full, pos, op in globals_in(data, start) if full == name), None)
