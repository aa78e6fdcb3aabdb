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
import functools
import os
import pickle
import random
from pathlib import Path

import torch
from safetensors.torch import save_file

import deadiff_fakes

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


def evil_extras_ckpt(files, folder) -> Path:
    """A real DEADiff .ckpt (torch zip) whose Lightning extras carry three payloads: it must LOAD, inertly."""
    path = Path(folder) / "evil_extras.ckpt"
    marker = files["marker"]
    torch.save({"state_dict": deadiff_fakes.as_module_state_dict(files["sd"]), "callbacks": RunsCode(marker),
                "loops": CallsPartial(marker), "hyper_parameters": EvalsCode(marker)}, path)
    return path


def legacy_pickle_with_code(files, folder) -> Path:
    path = Path(folder) / "legacy_code.ckpt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "hook": RunsCode(files["marker"])}, path,
               _use_new_zipfile_serialization=False)
    return path


def bare_pickle_with_code(files, folder) -> Path:
    return write(Path(folder) / "bare_code.ckpt", pickle.dumps(EvalsCode(files["marker"]), protocol=2))


def zip_whose_root_is_code(files, folder) -> Path:
    """A torch zip archive whose whole content is a payload (no state_dict at all)."""
    path = Path(folder) / "zip_code.ckpt"
    torch.save(RunsCode(files["marker"]), path)
    return path


# ------------------------------------------------------------------ damaged or foreign files

def truncate(path, out, fraction) -> Path:
    data = Path(path).read_bytes()
    return write(out, data[: int(len(data) * fraction)])


def ip_adapter_file(folder) -> Path:
    path = Path(folder) / "ip-adapter_sd15.bin"
    torch.save({"image_proj": {"proj.weight": torch.zeros(3072, 1024)},
                "ip_adapter": {"1.to_k_ip.weight": torch.zeros(320, 768)}}, path)
    return path


def ip_adapter_safetensors(folder) -> Path:
    """The .safetensors release of IP-Adapter: the same parts, flattened keys."""
    path = Path(folder) / "ip-adapter_sd15.safetensors"
    save_file({"image_proj.proj.weight": torch.zeros(3072, 1024),
               "ip_adapter.1.to_k_ip.weight": torch.zeros(320, 768)}, str(path))
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
inf_encoder = set_value("content_blip.Qformer.bert.encoder.layer.1.output_query.dense.weight", (3, 1),
                        float("-inf"))


def odd_dims(folder, name, **dims) -> Path:
    """A self-consistent file in the official layout at dimensions no DEADiff model can have."""
    sd = deadiff_fakes.make_official_state_dict(seed=4, frozen_parts=False, **dims)
    return deadiff_fakes.write_official_safetensors(Path(folder) / name, sd)


# case -> (make(files, folder) -> path, words the error must contain). Each file's name is in its error too.
BAD_FILES = {
    "zero bytes": (lambda f, t: write(t / "zero.ckpt", b""), "empty"),
    "random bytes": (lambda f, t: write(t / "random.ckpt", random_bytes(4096, 1)), "not a PyTorch checkpoint"),
    "random bytes .safetensors": (lambda f, t: write(t / "random.safetensors", random_bytes(4096, 2)),
                                  "truncated or corrupt"),
    "truncated ckpt": (lambda f, t: truncate(f["ckpt"], t / "cut.ckpt", 0.6), "truncated or corrupt"),
    "truncated safetensors": (lambda f, t: truncate(f["safetensors"], t / "cut.safetensors", 0.6),
                              "truncated or corrupt"),
    "SD1.5 checkpoint": (lambda f, t: sd15_file(t), "looks like a Stable Diffusion checkpoint"),
    "IP-Adapter": (lambda f, t: ip_adapter_file(t), "looks like an IP-Adapter model"),
    "IP-Adapter .safetensors": (lambda f, t: ip_adapter_safetensors(t), "looks like an IP-Adapter model"),
    "wrong shape": (lambda f, t: mutated(f, t, "shape.safetensors", lambda sd: sd.update(
        {"style_proj_layer.dense2.weight": torch.zeros(64, 100)})),
        "style_proj_layer.dense2.weight has shape [64, 100]"),
    "wrong site width": (lambda f, t: mutated(f, t, "site.safetensors", lambda sd: sd.update(
        {"model.diffusion_model.output_blocks.4.1.transformer_blocks.0.attn2.i_to_v.weight": torch.zeros(100, 64)})),
        "output_blocks.4.1.transformer_blocks.0.attn2.i_to_v.weight has shape [100, 64]"),
    "missing Q-Former layer part": (lambda f, t: mutated(f, t, "missing.safetensors", lambda sd: sd.pop(
        "content_blip.Qformer.bert.encoder.layer.1.output_query.dense.weight")),
        "missing 1 DEADiff tensors, e.g. content_blip.Qformer.bert.encoder.layer.1.output_query.dense.weight"),
    "no i_to_k": (lambda f, t: mutated(f, t, "noitok.safetensors", lambda sd: [
        sd.pop(k) for k in list(sd) if ".i_to_k." in k]), "is missing"),
    "NaN site projection": (lambda f, t: mutated(f, t, "nan.safetensors", nan_site),
                            "input_blocks.2.1.transformer_blocks.0.attn2.i_to_v.weight contains NaN"),
    "Inf site projection": (lambda f, t: mutated(f, t, "inf.safetensors", set_value(
        "model.diffusion_model.output_blocks.9.1.transformer_blocks.0.attn2.i_to_k.weight", (0, 5), float("inf"))),
        "output_blocks.9.1.transformer_blocks.0.attn2.i_to_k.weight contains NaN or Inf"),
    "integer weights": (lambda f, t: mutated(f, t, "int.safetensors", lambda sd: sd.update(
        {"style_proj_layer.dense1.bias": torch.zeros(256, dtype=torch.int32)})), "dtype torch.int32"),
    "boolean site projection": (lambda f, t: mutated(f, t, "bool.safetensors", lambda sd: sd.update(
        {SITE_V: torch.ones(sd[SITE_V].shape, dtype=torch.bool)})), "has dtype torch.bool"),
    "cross-attention not reading the vision width": (lambda f, t: mutated(f, t, "kv.safetensors", lambda sd: [
        sd.update({k: torch.zeros(64, 128)}) for k in list(sd) if ".crossattention.self.key.weight" in k
        or ".crossattention.self.value.weight" in k]),
        "crossattention.self.key.weight has shape [64, 128] but [64, 64] was expected"),
    "sites not reading the Q-Former width": (lambda f, t: mutated(f, t, "ctx.safetensors", lambda sd: [
        sd.update({k: torch.zeros(sd[k].shape[0], 96)}) for k in list(sd) if ".i_to_" in k]),
        "i_to_k.weight has shape [32, 96] but [32, 64] was expected"),
    "positions not a square grid plus one": (lambda f, t: mutated(f, t, "grid.safetensors", lambda sd: [
        sd.update({k: torch.zeros(52, 64)}) for k in list(sd) if k.endswith("positional_embedding")]),
        "positional_embedding has shape [52, 64] but [50, 64] was expected"),
    "scalar query tokens": (lambda f, t: mutated(f, t, "scalar.safetensors", lambda sd: sd.update(
        {"style_blip.query_tokens": torch.zeros(())})), "unexpected rank or size"),
    "not a zip although .ckpt": (lambda f, t: write(t / "text.ckpt", b"version https://git-lfs.github.com/spec/v1\n"),
                                 "not a PyTorch checkpoint"),
    "widths not a multiple of 64": (lambda f, t: odd_dims(t, "width48.safetensors", qformer_hidden=48),
                                    "Q-Former width 48"),
    "vocabulary without DEADiff's words": (lambda f, t: odd_dims(t, "vocab.safetensors", vocab_size=1000),
                                           "1000 rows"),
    "legacy pickle that runs code": (legacy_pickle_with_code, "asks for the Python object"),
    "bare pickle that runs code": (bare_pickle_with_code, "asks for the Python object"),
    "zip checkpoint that is only code": (zip_whose_root_is_code, "not a state_dict of tensors"),
}

# Files that load, but whose encoders hold NaN/Inf: the encoder node names the file and the weight.
BAD_AT_ENCODE = {
    "NaN encoder weight": (lambda f, t: mutated(f, t, "nan_encoder.safetensors", nan_encoder), "style",
                           "weight projs.style.dense1.weight (of the style encoder) contains NaN or Inf"),
    "-Inf encoder weight": (lambda f, t: mutated(f, t, "inf_encoder.safetensors", inf_encoder), "content",
                            "contains NaN or Inf"),
}

# Odd but valid files: they load and give the same tokens as the plain file (`files["sd"]`).
GOOD_ODD_FILES = {
    "ckpt with code in its extras": evil_extras_ckpt,
    "float64 weights": lambda f, t: deadiff_fakes.write_official_safetensors(
        Path(t) / "float64.safetensors", {k: v.double() if v.is_floating_point() else v for k, v in f["sd"].items()}),
}
