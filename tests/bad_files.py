"""The corpus of bad and hostile DEADiff files, generated in the tests (never downloaded).

Shared by the core-level test (tests/test_core_checkpoint.py: `load_deadiff` on each file) and the
server-level one (tests/test_reliability_files.py: each file picked in Load DEADiff Model of the real
ComfyUI server, which must then serve the next prompt normally).

Every maker is `make(files, folder) -> path`: `files` comes from `good_files` (a good state_dict, its
.ckpt and .safetensors, and `marker`, the path a pickle payload would create if it ever ran); the bad
file is written into `folder`.
"""

from __future__ import annotations

import builtins
import code
import ctypes
import functools
import importlib
import io
import marshal
import os
import pickle
import pty
import random
import runpy
import shutil
import socket
import subprocess
import sys
import webbrowser
import zipfile
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import save_file

import deadiff_fakes
import lightning_files
from deadiff_core.pickle_policy import CAN_RUN_CODE, NOT_ALLOWED

SITE_V = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.i_to_v.weight"


def good_files(folder, seed: int = 21) -> dict:
    """A good tiny DEADiff state_dict written as the official .ckpt and as .safetensors into `folder`."""
    folder = Path(folder)
    sd = deadiff_fakes.make_official_state_dict(seed=seed)
    ckpt = deadiff_fakes.write_official_ckpt(folder / "deadiff_v1.ckpt", sd)
    st_file = deadiff_fakes.write_official_safetensors(folder / "deadiff_v1.safetensors", sd)
    return {"sd": sd, "ckpt": ckpt, "safetensors": st_file, "folder": folder, "marker": folder / "pwned"}


def write(path, data: bytes) -> Path:
    path = Path(path)
    path.write_bytes(data)
    return path


def random_bytes(n: int, seed: int) -> bytes:
    """Reproducible noise that starts like neither a zip (PK), a pickle (0x80) nor a safetensors header."""
    data = bytearray(random.Random(seed).randbytes(n))
    data[0] = 0x13
    return bytes(data)


# ------------------------------------------------------------------ pickle payloads
# Every payload, opened by a loader that runs pickles (torch.load(weights_only=False), pickle.load),
# creates the marker file `files["marker"]` (the live ones: tests/test_hostile_files.py proves it in a
# subprocess) or would reach the network, a terminal or a browser (those are never run).


class Call:
    """Pickles as a call of `func(*args)` (REDUCE); `func` may itself be a Call, so calls nest."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __call__(self, *args):  # pickle requires the callable of a reduce to look callable
        raise RuntimeError("a payload stand-in is never called in the tests")

    def __reduce__(self):
        return self.func, self.args


class RunsCode:
    """Unpickling this would call os.system and create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class CallsPartial:
    """Unpickling this would build functools.partial(os.system, ...) and then call it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (functools.partial(os.system, f"touch {self.marker}"), ())


class EvalsCode:
    """Unpickling this would eval Python source that creates the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (builtins.eval, (f"open({str(self.marker)!r}, 'w').close()",))


def creates(marker) -> str:
    """Python source that creates the marker file."""
    return f"open({str(marker)!r}, 'w').close()"


# Hand-written pickles, for the opcodes pickle.dumps never writes this way (INST, OBJ, EXT, two BUILDs).
def op_global(module: str, name: str) -> bytes:
    return pickle.GLOBAL + f"{module}\n{name}\n".encode()


def op_str(text: str) -> bytes:
    data = text.encode()
    return pickle.BINUNICODE + len(data).to_bytes(4, "little") + data


def op_call(func: bytes, *args: bytes) -> bytes:
    """func(*args): MARK args TUPLE REDUCE."""
    return func + pickle.MARK + b"".join(args) + pickle.TUPLE + pickle.REDUCE


PROTO2 = pickle.PROTO + b"\x02"
EXT_CODE = 0xF1  # the extension code the EXT pickle uses (copyreg.add_extension("posix", "system", EXT_CODE))


def torch_zip(path, data_pkl: bytes) -> Path:
    """A torch zip checkpoint (the records torch.save writes) whose data.pkl is `data_pkl`."""
    template = io.BytesIO()
    torch.save({}, template)
    path = Path(path)
    with zipfile.ZipFile(template) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for info in source.infolist():
            out.writestr(info, data_pkl if info.filename.endswith("/data.pkl") else source.read(info))
    return path


def with_state_dict(files, full: bool = False, **extras) -> dict:
    """A DEADiff checkpoint dict (Lightning layout) with `extras` beside its state_dict: the whole good
    state_dict if `full`, else only its style ProjLayer (a refused file is never read further, and the
    corpus stays small)."""
    sd = files["sd"] if full else {k: v for k, v in files["sd"].items() if k.startswith("style_proj_layer.")}
    return {"state_dict": deadiff_fakes.as_module_state_dict(sd), "epoch": 3, "global_step": 12000, **extras}


def saved(path, obj, legacy: bool = False) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return Path(path)


def evil_extras_ckpt(files, folder) -> Path:
    """A real DEADiff .ckpt (torch zip) whose Lightning extras carry three payloads."""
    marker = files["marker"]
    return saved(
        Path(folder) / "evil_extras.ckpt",
        with_state_dict(
            files, full=True, callbacks=RunsCode(marker), loops=CallsPartial(marker), hyper_parameters=EvalsCode(marker)
        ),
    )


def nested_payload_ckpt(files, folder) -> Path:
    """subprocess.run deep inside dict values, lists and tuples of hyper_parameters."""
    payload = Call(subprocess.run, ["touch", str(files["marker"])])
    return saved(
        Path(folder) / "nested.ckpt",
        with_state_dict(files, hyper_parameters={"model": {"target": "deadiff.DEADiff", "stages": [1, (2, payload)]}}),
    )


def metadata_payload_ckpt(files, folder) -> Path:
    """exec inside the state_dict's own `_metadata` (the OrderedDict's pickled attribute)."""
    state = with_state_dict(files)["state_dict"]
    state._metadata["style_blip"] = {"version": Call(builtins.exec, creates(files["marker"]))}
    return saved(Path(folder) / "metadata.ckpt", {"state_dict": state})


def legacy_pickle_with_code(files, folder) -> Path:
    return saved(
        Path(folder) / "legacy_code.ckpt",
        {"state_dict": {"x": torch.zeros(1)}, "hook": RunsCode(files["marker"])},
        legacy=True,
    )


def legacy_header_with_code(files, folder) -> Path:
    """torch's legacy format whose third pickle (the system info, read before the data) is the payload."""
    head = pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
    payload = pickle.dumps(Call(shutil.copyfile, os.devnull, str(files["marker"])), protocol=2)
    return write(Path(folder) / "legacy_header.ckpt", head + payload + pickle.dumps({}, protocol=2))


def bare_pickle_with_code(files, folder) -> Path:
    return write(Path(folder) / "bare_code.ckpt", pickle.dumps(EvalsCode(files["marker"]), protocol=2))


def zip_whose_root_is_code(files, folder) -> Path:
    """A torch zip archive whose whole content is a payload (no state_dict at all)."""
    return saved(Path(folder) / "zip_code.ckpt", RunsCode(files["marker"]))


def protocol(number: int, payload, name: str):
    """A bare pickle of protocol `number`: a Lightning-like dict with `payload(marker)` in its callbacks."""

    def make(files, folder):
        data = {"state_dict": {}, "callbacks": {"ModelCheckpoint": payload(files["marker"])}}
        return write(Path(folder) / name, pickle.dumps(data, protocol=number))

    return make


def protocol0_global(files, folder) -> Path:
    """Protocol 0 by hand: GLOBAL 'os system', the plain-text opcodes of the oldest pickles."""
    data = f"cos\nsystem\n(S'touch {files['marker']}'\ntR.".encode()
    return write(Path(folder) / "proto0.ckpt", data)


def protocol0_inst(files, folder) -> Path:
    """Protocol 0 INST: instantiates 'subprocess getoutput' with the argument (a call, for a function)."""
    data = f"(S'touch {files['marker']}'\nisubprocess\ngetoutput\n.".encode()
    return write(Path(folder) / "inst.ckpt", data)


def protocol1_obj(files, folder) -> Path:
    """Protocol 1 OBJ: MARK, the global 'posix system', its argument, OBJ."""
    data = pickle.MARK + op_global("posix", "system") + pickle.SHORT_BINSTRING
    command = f"touch {files['marker']}".encode()
    data += bytes([len(command)]) + command + pickle.OBJ + pickle.STOP
    return write(Path(folder) / "obj.ckpt", data)


def ext_code(files, folder) -> Path:
    """EXT1: the global is not in the file, only a number that copyreg maps to posix.system where registered."""
    data = PROTO2 + pickle.EXT1 + bytes([EXT_CODE]) + op_str(f"touch {files['marker']}") + pickle.TUPLE1
    return write(Path(folder) / "ext.ckpt", data + pickle.REDUCE + pickle.STOP)


def build_setstate(files, folder) -> Path:
    """BUILD with __setstate__: an OrderedDict (allowed) gets os.system as its instance's __setstate__ through
    a first BUILD's slot state; a second BUILD then calls it with the command."""
    data = PROTO2 + op_call(op_global("collections", "OrderedDict"))
    data += pickle.NONE + pickle.EMPTY_DICT + op_str("__setstate__") + op_global("posix", "system")
    data += pickle.SETITEM + pickle.TUPLE2 + pickle.BUILD
    data += op_str(f"touch {files['marker']}") + pickle.BUILD + pickle.STOP
    return write(Path(folder) / "build.ckpt", data)


def newobj_partial(files, folder) -> Path:
    """NEWOBJ: functools.partial.__new__ takes the function and its arguments; the partial is then called."""
    data = PROTO2 + op_global("functools", "partial") + op_global("posix", "system")
    data += op_str(f"touch {files['marker']}") + pickle.TUPLE2 + pickle.NEWOBJ
    data += pickle.EMPTY_TUPLE + pickle.REDUCE + pickle.STOP
    return write(Path(folder) / "newobj.ckpt", data)


def newobj_ex_partial(files, folder) -> Path:
    """NEWOBJ_EX (protocol 4): the same with keyword arguments, subprocess.run(["touch", marker], check=True)."""
    data = pickle.PROTO + b"\x04" + op_global("functools", "partial") + op_global("subprocess", "run")
    data += pickle.EMPTY_LIST + pickle.MARK + op_str("touch") + op_str(str(files["marker"])) + pickle.APPENDS
    data += pickle.TUPLE2 + pickle.EMPTY_DICT + op_str("check") + pickle.NEWTRUE + pickle.SETITEM
    data += pickle.NEWOBJ_EX + pickle.EMPTY_TUPLE + pickle.REDUCE + pickle.STOP
    return write(Path(folder) / "newobj_ex.ckpt", data)


def persistent_id(files, folder) -> Path:
    """A torch zip whose tensor's persistent id (the storage record) is built by a call of posix.system."""
    data = PROTO2 + pickle.EMPTY_DICT + op_str("state_dict") + pickle.EMPTY_DICT + op_str("x")
    data += op_global("torch._utils", "_rebuild_tensor_v2") + pickle.MARK
    data += pickle.MARK + op_str("storage") + op_call(op_global("posix", "system"), op_str(f"touch {files['marker']}"))
    data += op_str("0") + op_str("cpu") + pickle.BININT1 + b"\x01" + pickle.TUPLE + pickle.BINPERSID
    data += pickle.BININT1 + b"\x00" + pickle.MARK + pickle.BININT1 + b"\x01" + pickle.TUPLE
    data += pickle.MARK + pickle.BININT1 + b"\x01" + pickle.TUPLE + pickle.NEWFALSE
    data += op_call(op_global("collections", "OrderedDict")) + pickle.TUPLE + pickle.REDUCE
    data += pickle.SETITEM + pickle.SETITEM + pickle.STOP
    return torch_zip(Path(folder) / "persid.ckpt", data)


def in_extras(name: str, payload):
    """A real DEADiff zip .ckpt with `payload(marker)` as its Lightning callbacks."""

    def make(files, folder):
        return saved(
            Path(folder) / name, with_state_dict(files, callbacks={"ModelCheckpoint": payload(files["marker"])})
        )

    return make


def types_marshal(files, folder) -> Path:
    """types.FunctionType(marshal.loads(code), {})(): a function made from marshalled bytecode, then called."""
    code_bytes = marshal.dumps(compile(creates(files["marker"]), "<payload>", "exec"))
    loads = op_call(op_global("marshal", "loads"), pickle.BINBYTES + len(code_bytes).to_bytes(4, "little") + code_bytes)
    function = op_call(op_global("types", "FunctionType"), loads, pickle.EMPTY_DICT)
    data = pickle.PROTO + b"\x03" + function + pickle.EMPTY_TUPLE + pickle.REDUCE + pickle.STOP
    return write(Path(folder) / "marshal.ckpt", data)


def sys_modules(files, folder) -> Path:
    """getattr(sys.modules.get("os"), "system")(command): sys.modules reached as a global, by hand."""
    getattr_ = op_global("builtins", "getattr")
    module = op_call(op_call(getattr_, op_global("sys", "modules"), op_str("get")), op_str("os"))
    data = PROTO2 + op_call(op_call(getattr_, module, op_str("system")), op_str(f"touch {files['marker']}"))
    return write(Path(folder) / "sys.ckpt", data + pickle.STOP)


def nt_system(files, folder) -> Path:
    """Windows' os.system (module nt): refused by name on any system."""
    data = PROTO2 + op_call(op_global("nt", "system"), op_str(f"type nul > {files['marker']}")) + pickle.STOP
    return write(Path(folder) / "nt.ckpt", data)


class TrainingConfig:
    """A training script's own config class: not code, but nothing a DEADiff checkpoint holds."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


TrainingConfig.__module__ = "__main__"  # as a training script run as `python main.py` pickles it


def custom_class_ckpt(files, folder) -> Path:

    main = sys.modules["__main__"]
    had = getattr(main, "TrainingConfig", None)
    main.TrainingConfig = TrainingConfig  # pickle checks that __main__.TrainingConfig is this class
    try:
        return saved(
            Path(folder) / "custom_class.ckpt",
            with_state_dict(files, hyper_parameters={"config": TrainingConfig(target="deadiff.DEADiff", lr=1e-5)}),
        )
    finally:
        if had is None:
            del main.TrainingConfig


class Hostile(NamedTuple):
    make: object  # make(files, folder) -> path
    names: str  # the global the refusal names first
    reason: str  # pickle_policy.CAN_RUN_CODE or NOT_ALLOWED
    oracle: str  # who else flags it: "picklescan", "picklescan --strict" or "torch weights_only" (test_hostile_files)
    live: bool  # the payload creates the marker when a pickle-running loader opens the file
    also: tuple = ()  # other globals the message lists


SYSTEM = os.system.__module__ + ".system"  # posix.system (nt.system on Windows), how pickle names os.system

HOSTILE_FILES = {
    "payloads in a DEADiff ckpt's Lightning extras": Hostile(
        evil_extras_ckpt, SYSTEM, CAN_RUN_CODE, "picklescan", True, ("builtins.eval", "functools.partial")
    ),
    "payload nested in lists and tuples of hyper_parameters": Hostile(
        nested_payload_ckpt, "subprocess.run", CAN_RUN_CODE, "picklescan", True
    ),
    "payload in the state_dict's _metadata": Hostile(
        metadata_payload_ckpt, "builtins.exec", CAN_RUN_CODE, "picklescan", True
    ),
    "legacy pickle that runs code": Hostile(legacy_pickle_with_code, SYSTEM, CAN_RUN_CODE, "picklescan", True),
    "legacy file whose system info runs shutil": Hostile(
        legacy_header_with_code, "shutil.copyfile", CAN_RUN_CODE, "picklescan", True
    ),
    "bare pickle that runs code": Hostile(bare_pickle_with_code, "builtins.eval", CAN_RUN_CODE, "picklescan", True),
    "zip checkpoint that is only code": Hostile(zip_whose_root_is_code, SYSTEM, CAN_RUN_CODE, "picklescan", True),
    "protocol 0 GLOBAL os.system": Hostile(protocol0_global, "os.system", CAN_RUN_CODE, "picklescan", True),
    "protocol 0 INST subprocess": Hostile(protocol0_inst, "subprocess.getoutput", CAN_RUN_CODE, "picklescan", True),
    "protocol 1 OBJ posix.system": Hostile(protocol1_obj, "posix.system", CAN_RUN_CODE, "picklescan", True),
    "protocol 3 open": Hostile(
        protocol(3, lambda m: Call(builtins.open, str(m), "w"), "proto3.ckpt"),
        "io.open",
        CAN_RUN_CODE,
        "picklescan --strict",
        True,
    ),
    "protocol 4 STACK_GLOBAL getattr and __import__": Hostile(
        protocol(
            4,
            lambda m: Call(Call(builtins.getattr, Call(builtins.__import__, "os"), "system"), f"touch {m}"),
            "proto4.ckpt",
        ),
        "builtins.getattr",
        CAN_RUN_CODE,
        "picklescan",
        True,
        ("builtins.__import__",),
    ),
    "protocol 5 importlib": Hostile(
        protocol(
            5,
            lambda m: Call(Call(builtins.getattr, Call(importlib.import_module, "os"), "system"), f"touch {m}"),
            "proto5.ckpt",
        ),
        "builtins.getattr",
        CAN_RUN_CODE,
        "picklescan",
        True,
        ("importlib.import_module",),
    ),
    "protocol 2 compile and eval": Hostile(
        protocol(
            2, lambda m: Call(builtins.eval, Call(builtins.compile, creates(m), "<payload>", "exec")), "compile.ckpt"
        ),
        "builtins.eval",
        CAN_RUN_CODE,
        "picklescan",
        True,
        ("builtins.compile",),
    ),
    "EXT1 extension code": Hostile(ext_code, f"extension code {EXT_CODE}", NOT_ALLOWED, "torch weights_only", True),
    "BUILD with __setstate__": Hostile(build_setstate, "posix.system", CAN_RUN_CODE, "picklescan", True),
    "NEWOBJ functools.partial": Hostile(
        newobj_partial, "functools.partial", CAN_RUN_CODE, "picklescan", True, ("posix.system",)
    ),
    "NEWOBJ_EX functools.partial": Hostile(
        newobj_ex_partial, "functools.partial", CAN_RUN_CODE, "picklescan", True, ("subprocess.run",)
    ),
    "persistent id built by a call": Hostile(persistent_id, "posix.system", CAN_RUN_CODE, "picklescan", True),
    "runpy": Hostile(
        in_extras("runpy.ckpt", lambda m: Call(runpy._run_code, creates(m), {})),
        "runpy._run_code",
        CAN_RUN_CODE,
        "picklescan",
        True,
    ),
    "pickle inside a pickle": Hostile(
        in_extras("nested_pickle.ckpt", lambda m: Call(pickle.loads, pickle.dumps(RunsCode(m), protocol=2))),
        "pickle.loads",
        CAN_RUN_CODE,
        "picklescan",
        True,
    ),
    "types and marshal": Hostile(
        types_marshal, "types.FunctionType", CAN_RUN_CODE, "picklescan --strict", True, ("marshal.loads",)
    ),
    "ctypes": Hostile(
        in_extras(
            "ctypes.ckpt",
            lambda m: Call(Call(builtins.getattr, Call(ctypes.CDLL, None), "system"), f"touch {m}".encode()),
        ),
        "builtins.getattr",
        CAN_RUN_CODE,
        "picklescan",
        True,
        ("ctypes.CDLL",),
    ),
    "code.InteractiveInterpreter": Hostile(
        in_extras(
            "code.ckpt",
            lambda m: Call(Call(builtins.getattr, Call(code.InteractiveInterpreter), "runsource"), creates(m)),
        ),
        "builtins.getattr",
        CAN_RUN_CODE,
        "picklescan",
        True,
        ("code.InteractiveInterpreter",),
    ),
    "sys.modules": Hostile(sys_modules, "builtins.getattr", CAN_RUN_CODE, "picklescan", True, ("sys.modules",)),
    "nt.system": Hostile(nt_system, "nt.system", CAN_RUN_CODE, "picklescan", False),
    "socket": Hostile(
        in_extras("socket.ckpt", lambda m: Call(socket.create_connection, ("127.0.0.1", 9))),
        "socket.create_connection",
        CAN_RUN_CODE,
        "picklescan",
        False,
    ),
    "pty": Hostile(
        in_extras("pty.ckpt", lambda m: Call(pty.spawn, ["touch", str(m)])),
        "pty.spawn",
        CAN_RUN_CODE,
        "picklescan",
        False,
    ),
    "webbrowser": Hostile(
        in_extras("webbrowser.ckpt", lambda m: Call(webbrowser.open, "http://127.0.0.1:9/")),
        "webbrowser.open",
        CAN_RUN_CODE,
        "picklescan",
        False,
    ),
    "torch.hub": Hostile(
        in_extras("hub.ckpt", lambda m: Call(torch.hub.load, "someone/repo", "model")),
        "torch.hub.load",
        CAN_RUN_CODE,
        "picklescan --strict",
        False,
    ),
    "torch.load of another file": Hostile(
        in_extras("torch_load.ckpt", lambda m: Call(torch.load, str(m) + ".pt")),
        "torch.serialization.load",
        CAN_RUN_CODE,
        "picklescan",
        False,
    ),
    "a training script's own class": Hostile(
        custom_class_ckpt, "__main__.TrainingConfig", NOT_ALLOWED, "picklescan --strict", False
    ),
}


# ------------------------------------------------------------------ damaged or foreign files


def truncate(path, out, fraction) -> Path:
    data = Path(path).read_bytes()
    return write(out, data[: int(len(data) * fraction)])


def ip_adapter_file(folder) -> Path:
    path = Path(folder) / "ip-adapter_sd15.bin"
    torch.save(
        {
            "image_proj": {"proj.weight": torch.zeros(3072, 1024)},
            "ip_adapter": {"1.to_k_ip.weight": torch.zeros(320, 768)},
        },
        path,
    )
    return path


def ip_adapter_safetensors(folder) -> Path:
    """The .safetensors release of IP-Adapter: the same parts, flattened keys."""
    path = Path(folder) / "ip-adapter_sd15.safetensors"
    save_file(
        {"image_proj.proj.weight": torch.zeros(3072, 1024), "ip_adapter.1.to_k_ip.weight": torch.zeros(320, 768)},
        str(path),
    )
    return path


def sd15_file(folder) -> Path:
    path = Path(folder) / "v1-5-pruned-emaonly.safetensors"
    save_file(deadiff_fakes.frozen_sd_placeholders(), str(path))
    return path


def mutated(files, folder, name, change) -> Path:
    sd = dict(files["sd"])
    change(sd)
    return deadiff_fakes.write_official_safetensors(Path(folder) / name, sd)


def set_value(key, index, value):
    """A state_dict change: one element of `key` set to `value` (NaN, Inf)."""

    def change(sd):
        sd[key] = sd[key].clone()
        sd[key][index] = value

    return change


nan_site = set_value(SITE_V, (1, 2), float("nan"))
nan_encoder = set_value("style_proj_layer.dense1.weight", (0, 0), float("nan"))
inf_encoder = set_value("content_blip.Qformer.bert.encoder.layer.1.output_query.dense.weight", (3, 1), float("-inf"))


def odd_dims(folder, name, **dims) -> Path:
    """A self-consistent file in the official layout at dimensions no DEADiff model can have."""
    sd = deadiff_fakes.make_official_state_dict(seed=4, frozen_parts=False, **dims)
    return deadiff_fakes.write_official_safetensors(Path(folder) / name, sd)


# case -> (make(files, folder) -> path, words the error must contain). Each file's name is in its error too.
BAD_FILES = {
    "zero bytes": (lambda f, t: write(t / "zero.ckpt", b""), "empty"),
    "random bytes": (lambda f, t: write(t / "random.ckpt", random_bytes(4096, 1)), "not a PyTorch checkpoint"),
    "random bytes .safetensors": (
        lambda f, t: write(t / "random.safetensors", random_bytes(4096, 2)),
        "truncated or corrupt",
    ),
    "truncated ckpt": (lambda f, t: truncate(f["ckpt"], t / "cut.ckpt", 0.6), "truncated or corrupt"),
    "truncated safetensors": (
        lambda f, t: truncate(f["safetensors"], t / "cut.safetensors", 0.6),
        "truncated or corrupt",
    ),
    "SD1.5 checkpoint": (lambda f, t: sd15_file(t), "looks like a Stable Diffusion checkpoint"),
    "IP-Adapter": (lambda f, t: ip_adapter_file(t), "looks like an IP-Adapter model"),
    "IP-Adapter .safetensors": (lambda f, t: ip_adapter_safetensors(t), "looks like an IP-Adapter model"),
    "wrong shape": (
        lambda f, t: mutated(
            f, t, "shape.safetensors", lambda sd: sd.update({"style_proj_layer.dense2.weight": torch.zeros(64, 100)})
        ),
        "style_proj_layer.dense2.weight has shape [64, 100]",
    ),
    "wrong site width": (
        lambda f, t: mutated(
            f,
            t,
            "site.safetensors",
            lambda sd: sd.update(
                {
                    "model.diffusion_model.output_blocks.4.1.transformer_blocks.0.attn2.i_to_v.weight": torch.zeros(
                        100, 64
                    )
                }
            ),
        ),
        "output_blocks.4.1.transformer_blocks.0.attn2.i_to_v.weight has shape [100, 64]",
    ),
    "missing Q-Former layer part": (
        lambda f, t: mutated(
            f,
            t,
            "missing.safetensors",
            lambda sd: sd.pop("content_blip.Qformer.bert.encoder.layer.1.output_query.dense.weight"),
        ),
        "missing 1 DEADiff tensors, e.g. content_blip.Qformer.bert.encoder.layer.1.output_query.dense.weight",
    ),
    "no i_to_k": (
        lambda f, t: mutated(f, t, "noitok.safetensors", lambda sd: [sd.pop(k) for k in list(sd) if ".i_to_k." in k]),
        "is missing",
    ),
    "NaN site projection": (
        lambda f, t: mutated(f, t, "nan.safetensors", nan_site),
        "input_blocks.2.1.transformer_blocks.0.attn2.i_to_v.weight contains NaN",
    ),
    "Inf site projection": (
        lambda f, t: mutated(
            f,
            t,
            "inf.safetensors",
            set_value(
                "model.diffusion_model.output_blocks.9.1.transformer_blocks.0.attn2.i_to_k.weight", (0, 5), float("inf")
            ),
        ),
        "output_blocks.9.1.transformer_blocks.0.attn2.i_to_k.weight contains NaN or Inf",
    ),
    "integer weights": (
        lambda f, t: mutated(
            f,
            t,
            "int.safetensors",
            lambda sd: sd.update({"style_proj_layer.dense1.bias": torch.zeros(256, dtype=torch.int32)}),
        ),
        "dtype torch.int32",
    ),
    "boolean site projection": (
        lambda f, t: mutated(
            f, t, "bool.safetensors", lambda sd: sd.update({SITE_V: torch.ones(sd[SITE_V].shape, dtype=torch.bool)})
        ),
        "has dtype torch.bool",
    ),
    "cross-attention not reading the vision width": (
        lambda f, t: mutated(
            f,
            t,
            "kv.safetensors",
            lambda sd: [
                sd.update({k: torch.zeros(64, 128)})
                for k in list(sd)
                if ".crossattention.self.key.weight" in k or ".crossattention.self.value.weight" in k
            ],
        ),
        "crossattention.self.key.weight has shape [64, 128] but [64, 64] was expected",
    ),
    "sites not reading the Q-Former width": (
        lambda f, t: mutated(
            f,
            t,
            "ctx.safetensors",
            lambda sd: [sd.update({k: torch.zeros(sd[k].shape[0], 96)}) for k in list(sd) if ".i_to_" in k],
        ),
        "i_to_k.weight has shape [32, 96] but [32, 64] was expected",
    ),
    "positions not a square grid plus one": (
        lambda f, t: mutated(
            f,
            t,
            "grid.safetensors",
            lambda sd: [sd.update({k: torch.zeros(52, 64)}) for k in list(sd) if k.endswith("positional_embedding")],
        ),
        "positional_embedding has shape [52, 64] but [50, 64] was expected",
    ),
    "scalar query tokens": (
        lambda f, t: mutated(
            f, t, "scalar.safetensors", lambda sd: sd.update({"style_blip.query_tokens": torch.zeros(())})
        ),
        "unexpected rank or size",
    ),
    "not a zip although .ckpt": (
        lambda f, t: write(t / "text.ckpt", b"version https://git-lfs.github.com/spec/v1\n"),
        "not a PyTorch checkpoint",
    ),
    "widths not a multiple of 64": (
        lambda f, t: odd_dims(t, "width48.safetensors", qformer_hidden=48),
        "Q-Former width 48",
    ),
    "vocabulary without DEADiff's words": (lambda f, t: odd_dims(t, "vocab.safetensors", vocab_size=1000), "1000 rows"),
}
# The hostile files are bad files too: their error names the global first refused.
BAD_FILES.update({case: (h.make, f"is unsafe: its pickle names {h.names}") for case, h in HOSTILE_FILES.items()})

# Files that load, but whose encoders hold NaN/Inf: the encoder node names the file and the weight.
BAD_AT_ENCODE = {
    "NaN encoder weight": (
        lambda f, t: mutated(f, t, "nan_encoder.safetensors", nan_encoder),
        "style",
        "weight projs.style.dense1.weight (of the style encoder) contains NaN or Inf",
    ),
    "-Inf encoder weight": (
        lambda f, t: mutated(f, t, "inf_encoder.safetensors", inf_encoder),
        "content",
        "contains NaN or Inf",
    ),
}

# Odd but valid files: they load and give the same tokens as the plain file (`files["sd"]`).
GOOD_ODD_FILES = {
    "Lightning checkpoint written by pytorch_lightning": lambda f, t: lightning_files.write_lightning_ckpt(
        Path(t) / "lightning.ckpt", f["sd"]
    ),
    "Lightning 1.x records (ModelCheckpoint class key, AttributeDict)": lambda f, t: lightning_files.as_lightning_1x(
        lightning_files.write_lightning_ckpt(Path(t) / "lightning_1x.ckpt", f["sd"])
    ),
    "float64 weights": lambda f, t: deadiff_fakes.write_official_safetensors(
        Path(t) / "float64.safetensors", {k: v.double() if v.is_floating_point() else v for k, v in f["sd"].items()}
    ),
}
