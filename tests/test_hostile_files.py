"""The hostile corpus (tests/bad_files.py HOSTILE_FILES) against the reader, and against two oracles.

- Each file is refused with DEADiffUnsafeFileError naming the global, where it sits, that the file is
  unsafe and what to do; its payload never runs (the marker file it would create never appears).
- The payloads are real: a subprocess that opens each live file the way the official scripts do
  (torch.load(weights_only=False)) creates its marker, so "never appears" means something.
- Independent oracles: picklescan (what model hubs run) flags every refused file, by default or in
  its --strict mode (a global outside its list of safe ones), except the EXT1 file, where the global
  is only a number and picklescan sees none: torch's own weights-only loader refuses that one. Every
  refusal names a global outside the pack's allowlist. The real files (the official-layout .ckpt and
  one written by pytorch_lightning) are flagged by neither picklescan's default mode nor the pack.
"""

from __future__ import annotations

import copyreg
import io
import json
import logging
import os
import pickle
import subprocess
import sys
import zipfile

import pytest
import torch

import bad_files
import lightning_files
from bad_files import EXT_CODE, HOSTILE_FILES
from deadiff_core import load_deadiff
from deadiff_core import pickle_policy
from deadiff_core.checkpoint import open_tensors
from deadiff_core.errors import DEADiffCheckpointError, DEADiffUnsafeFileError
from deadiff_core.pickle_policy import ALLOWED, CAN_RUN_CODE, NOT_ALLOWED


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Every hostile file in its own folder, with its own marker."""
    base = tmp_path_factory.mktemp("hostile")
    source = bad_files.good_files(base, seed=5)
    made = {}
    for index, (case, hostile) in enumerate(sorted(HOSTILE_FILES.items())):
        folder = base / f"case{index}"
        folder.mkdir()
        files = {**source, "marker": folder / "pwned"}
        made[case] = (hostile.make(files, folder), files["marker"])
    return {"source": source, "made": made}


@pytest.mark.parametrize("case", sorted(HOSTILE_FILES))
def test_hostile_file_is_refused_by_name_and_nothing_runs(corpus, case):
    hostile = HOSTILE_FILES[case]
    path, marker = corpus["made"][case]
    with pytest.raises(DEADiffUnsafeFileError) as error:
        load_deadiff(path)
    e = error.value
    message = str(e)
    assert (e.global_name, e.reason) == (hostile.names, hostile.reason)
    assert message.startswith(f"{path}: is unsafe: its pickle names {hostile.names}, ")
    assert all(name in message for name in hostile.also), message
    assert "nothing from it was run" in message and "Delete it and download deadiff_v1.ckpt again" in message
    assert "do not open it with torch.load(weights_only=False)" in message
    assert e.where.startswith("in ") and e.where in message
    assert not marker.exists(), f"{case}: the payload ran"


# Where the first refused name sits: the archive member or pickle, the byte and opcode, the key.
WHERE = {
    "payloads in a DEADiff ckpt's Lightning extras": ("evil_extras/data.pkl", "(GLOBAL)", "under the key callbacks"),
    "payload nested in lists and tuples of hyper_parameters": (
        "nested/data.pkl",
        "(GLOBAL)",
        "under the key hyper_parameters.model.stages[1][1]",
    ),
    "payload in the state_dict's _metadata": (
        "metadata/data.pkl",
        "(GLOBAL)",
        "under the key state_dict._metadata.style_blip.version",
    ),
    "legacy pickle that runs code": (
        "pickle 4 of the file (the data of torch's legacy format)",
        "(GLOBAL)",
        "under the key hook",
    ),
    "legacy file whose system info runs shutil": (
        "pickle 3 of the file (the system info of torch's legacy format)",
        "at byte 23 (GLOBAL)",
        "under the key (the whole file)",
    ),
    "protocol 0 GLOBAL os.system": ("the pickle at the start of the file", "at byte 0 (GLOBAL)", ""),
    "protocol 0 INST subprocess": ("the pickle at the start of the file", "(INST)", ""),
    "protocol 4 STACK_GLOBAL getattr and __import__": (
        "the pickle at the start of the file",
        "(STACK_GLOBAL)",
        "under the key callbacks.ModelCheckpoint",
    ),
    "EXT1 extension code": ("the pickle at the start of the file", "at byte 2 (EXT1)", ""),
    "persistent id built by a call": ("archive/data.pkl", "(GLOBAL)", ""),
    "a training script's own class": ("custom_class/data.pkl", "(GLOBAL)", "under the key hyper_parameters.config"),
}


@pytest.mark.parametrize("case", sorted(WHERE))
def test_the_message_says_where_the_global_sits(corpus, case):
    path, _ = corpus["made"][case]
    with pytest.raises(DEADiffUnsafeFileError) as error:
        load_deadiff(path)
    for words in WHERE[case]:
        assert words in error.value.where, (case, error.value.where)


def test_the_offset_is_the_opcode_that_names_the_global(corpus):
    """The byte offset points at the GLOBAL opcode itself, in the file's own bytes."""
    path, _ = corpus["made"]["protocol 0 INST subprocess"]
    with pytest.raises(DEADiffUnsafeFileError) as error:
        load_deadiff(path)
    offset = int(error.value.where.split("at byte ")[1].split(" ")[0])
    assert path.read_bytes()[offset : offset + 22] == b"isubprocess\ngetoutput\n"


def test_an_ext_code_registered_in_this_process_is_refused_by_its_name(corpus):
    """Where a library registered the extension code (copyreg), the unpickler resolves it to a global,
    which is then judged like any other."""
    path, marker = corpus["made"]["EXT1 extension code"]
    copyreg.add_extension(os.system.__module__, "system", EXT_CODE)
    try:
        with pytest.raises(DEADiffUnsafeFileError, match=f"names {os.system.__module__}.system, .* \\(EXT1\\)"):
            load_deadiff(path)
    finally:
        copyreg.remove_extension(os.system.__module__, "system", EXT_CODE)
    assert not marker.exists()


def test_the_corpus_covers_every_way_to_a_callable_and_every_family():
    paths = " ".join(HOSTILE_FILES)
    for opcode in (
        "GLOBAL",
        "STACK_GLOBAL",
        "INST",
        "OBJ",
        "EXT1",
        "BUILD with __setstate__",
        "NEWOBJ",
        "NEWOBJ_EX",
        "persistent id",
        "lists and tuples",
        "_metadata",
        "legacy",
        "bare pickle",
    ):
        assert opcode in paths, opcode
    for number in range(6):
        assert f"protocol {number}" in paths or number == 2 and "bare pickle" in paths
    named = " ".join(h.names + " " + " ".join(h.also) for h in HOSTILE_FILES.values())
    for family in (
        "os.",
        "posix.",
        "nt.",
        "subprocess.",
        "sys.",
        "builtins.eval",
        "builtins.exec",
        "builtins.compile",
        "builtins.getattr",
        "builtins.__import__",
        "io.open",
        "shutil.",
        "socket.",
        "importlib.",
        "runpy.",
        "pty.",
        "webbrowser.",
        "pickle.",
        "marshal.",
        "types.",
        "ctypes.",
        "code.",
        "torch.hub.",
        "torch.serialization.load",
        "functools.",
    ):
        assert family in named, family
    assert len(HOSTILE_FILES) >= 12


_OPEN_EACH = """
import copyreg, json, os, sys, torch
copyreg.add_extension(os.system.__module__, "system", {code})
for path in json.loads(sys.argv[1]):
    try:
        torch.load(path, weights_only=False)  # what the official DEADiff scripts do
    except BaseException:
        pass
"""


def test_the_payloads_are_real(corpus, tmp_path):
    """The live files, opened with torch.load(weights_only=False) in a subprocess, create their markers."""
    live = {case: corpus["made"][case] for case, h in HOSTILE_FILES.items() if h.live}
    assert len(live) >= 12
    paths = [str(path) for path, _ in live.values()]
    subprocess.run(
        [sys.executable, "-c", _OPEN_EACH.format(code=EXT_CODE), json.dumps(paths)],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=600,
        check=False,
    )
    ran = {case for case, (_, marker) in live.items() if marker.exists()}
    assert ran == set(live), f"payloads that did not run: {sorted(set(live) - ran)}"
    for _, marker in live.values():
        marker.unlink()


# ------------------------------------------------------------------ independent oracles


def picklescan_issues(path, strict: bool = False) -> int:
    from picklescan.scanner import scan_file_path

    logging.getLogger("picklescan").setLevel(logging.CRITICAL)
    return scan_file_path(str(path), strict=strict).issues_count


def torch_weights_only_refuses(path) -> bool:
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        return True
    return False


@pytest.mark.parametrize("case", sorted(HOSTILE_FILES))
def test_picklescan_or_torch_agrees_the_file_is_hostile(corpus, case):
    """Which oracle flags each file is written in the corpus (`Hostile.oracle`):
    "picklescan": picklescan's default scan finds a dangerous global;
    "picklescan --strict": only its strict scan flags it (a global outside picklescan's safe list, which
    its default does not know as dangerous: io.open, types.FunctionType, torch.hub.load, a script's class);
    "torch weights_only": picklescan sees no global at all (EXT1 carries a number), torch's weights-only
    loader refuses the opcode. And every refusal names a global outside the pack's allowlist."""
    hostile = HOSTILE_FILES[case]
    path, marker = corpus["made"][case]
    default, strict = picklescan_issues(path), picklescan_issues(path, strict=True)
    if hostile.oracle == "picklescan":
        assert default > 0
    elif hostile.oracle == "picklescan --strict":
        assert default == 0 and strict > 0
    else:
        assert hostile.oracle == "torch weights_only"
        assert default == strict == 0 and torch_weights_only_refuses(path)
    assert hostile.names not in ALLOWED
    # the pack's deny-list and picklescan's default agree, but for three it does not list as dangerous
    assert (hostile.reason == CAN_RUN_CODE) == (
        hostile.oracle == "picklescan" or hostile.names in ("io.open", "types.FunctionType", "torch.hub.load")
    )
    assert not marker.exists()


def test_fickling_rates_the_hostile_files_unsafe(corpus):
    """fickling (0.1.12, a second opinion) rates every hostile file it can analyse at least LIKELY_UNSAFE.
    It cannot analyse two (its analysis raises on the EXT1 and NEWOBJ_EX pickles), and it also rates
    the real Lightning checkpoint as malicious, so it cannot stand as the oracle for real files."""
    from fickling.analysis import Severity, check_safety
    from fickling.fickle import StackedPickle

    failed = set()
    for case, (path, _) in corpus["made"].items():
        data = path.read_bytes()
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                data = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
        try:
            rating = max(
                check_safety(p).severity for p in StackedPickle.load(io.BytesIO(data), fail_on_decode_error=False)
            )
        except Exception:
            failed.add(case)
            continue
        assert rating >= Severity.LIKELY_UNSAFE, (case, rating)
    assert failed == {"EXT1 extension code", "NEWOBJ_EX functools.partial"}


def test_real_files_pass_both_picklescan_and_the_pack(corpus, tmp_path):
    source = corpus["source"]
    lightning = lightning_files.write_lightning_ckpt(tmp_path / "lightning.ckpt", source["sd"])
    legacy = tmp_path / "legacy_good.ckpt"
    torch.save({"state_dict": source["sd"]}, legacy, _use_new_zipfile_serialization=False)
    for path in (source["ckpt"], lightning, legacy):
        assert picklescan_issues(path) == 0, path.name
        open_tensors(str(path))  # no refusal


# ------------------------------------------------------------------ the policy itself


@pytest.mark.parametrize(
    "module,name",
    [
        ("os", "system"),
        ("posix", "system"),
        ("nt", "system"),
        ("subprocess", "Popen"),
        ("sys", "modules"),
        ("builtins", "eval"),
        ("__builtin__", "eval"),
        ("builtins", "exec"),
        ("builtins", "compile"),
        ("builtins", "getattr"),
        ("builtins", "__import__"),
        ("builtins", "open"),
        ("__builtin__", "apply"),
        ("shutil", "rmtree"),
        ("socket", "socket"),
        ("importlib", "import_module"),
        ("runpy", "run_path"),
        ("pty", "spawn"),
        ("webbrowser", "open"),
        ("pickle", "loads"),
        ("cPickle", "loads"),
        ("_pickle", "loads"),
        ("marshal", "loads"),
        ("types", "CodeType"),
        ("ctypes", "CDLL"),
        ("code", "interact"),
        ("torch.hub", "load"),
        ("torch", "hub.load"),
        ("torch", "load"),
        ("torch.serialization", "load"),
        ("commands", "getoutput"),
        ("functools", "partial"),
        ("operator", "attrgetter"),
        ("numpy.testing._private.utils", "runstring"),
        ("os.path", "join"),
    ],
)
def test_code_running_globals_are_refused_even_if_allowed(module, name, monkeypatch):
    """The deny-list wins: each stays refused even with the allowlist opened to it."""
    verdict = pickle_policy.judge(module, name)
    assert verdict is not None
    monkeypatch.setattr(pickle_policy, "ALLOWED", ALLOWED | {verdict.name, f"{module}.{name}"})
    still = pickle_policy.judge(module, name)
    assert still is not None and still.reason == CAN_RUN_CODE


def test_attribute_chains_of_allowed_globals_are_not_allowed():
    """Protocol 4 resolves dotted names; an allowed class's attributes are not allowed with it."""
    assert pickle_policy.judge("collections", "OrderedDict.__init__.__globals__").reason == NOT_ALLOWED
    assert pickle_policy.judge("torch", "FloatStorage.__reduce__") is not None


def test_what_lightning_writes_is_allowed():
    for name in (
        "torch._utils._rebuild_tensor_v2",
        "torch.FloatStorage",
        "torch.HalfStorage",
        "collections.OrderedDict",
        "collections.defaultdict",
        "omegaconf.dictconfig.DictConfig",
        "omegaconf.listconfig.ListConfig",
        "omegaconf.base.ContainerMetadata",
        "omegaconf.base.Metadata",
        "omegaconf.nodes.AnyNode",
        "typing.Any",
        "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
        "lightning_fabric.utilities.data.AttributeDict",
        "numpy.core.multiarray.scalar",
        "numpy.dtype",
        "_codecs.encode",
    ):
        module, _, attr = name.rpartition(".")
        assert pickle_policy.judge(module, attr) is None, name
    assert pickle_policy.judge("__builtin__", "long") is None  # protocol 2's spelling of builtins.int
    assert pickle_policy.judge("__main__", "Config") == ("__main__.Config", NOT_ALLOWED)


def test_a_refused_file_is_still_a_checkpoint_error():
    """Existing handlers of DEADiffCheckpointError (nodes, deadiff-convert) catch the refusal too."""
    assert issubclass(DEADiffUnsafeFileError, DEADiffCheckpointError)


# ------------------------------------------------------------------ the command-line tools: exit 2, same message


def test_deadiff_convert_refuses_with_exit_2(corpus, tmp_path, capsys):
    from deadiff_core.convert import main as convert_main

    path, marker = corpus["made"]["payloads in a DEADiff ckpt's Lightning extras"]
    out = tmp_path / "compact.safetensors"
    assert convert_main([str(path), str(out)]) == 2
    err = capsys.readouterr().err
    with pytest.raises(DEADiffUnsafeFileError) as error:
        load_deadiff(path)
    assert err.strip() == f"deadiff-convert: {error.value}"
    assert not out.exists() and not out.with_name(out.name + ".partial").exists() and not marker.exists()


def test_deadiff_run_refuses_with_exit_2(corpus, tmp_path):
    """The runner, as a user runs it (a subprocess), with a hostile deadiff_v1.ckpt where the README puts it.
    The tiny SD1.5 of the test pack stands in for the SD1.5 checkpoint (the runner's test hook)."""
    from PIL import Image

    from conftest import REPO, TEST_PACK, comfyui_dir

    path, marker = corpus["made"]["payloads in a DEADiff ckpt's Lightning extras"]
    base = tmp_path / "base"
    (base / "models" / "deadiff").mkdir(parents=True)
    installed = base / "models" / "deadiff" / "deadiff_v1.ckpt"
    installed.write_bytes(path.read_bytes())
    style = tmp_path / "style.png"
    Image.new("RGB", (40, 32), (200, 40, 10)).save(style)
    env = {
        **os.environ,
        "COMFYUI_DIR": str(comfyui_dir()),
        "DEADIFF_RUNNER_TEST_PACK": str(TEST_PACK),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "deadiff_runner.cli",
            "--style",
            str(style),
            "--steps",
            "1",
            "--width",
            "64",
            "--height",
            "64",
            "--output",
            str(tmp_path / "out.png"),
            "--base-directory",
            str(base),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    with pytest.raises(DEADiffUnsafeFileError) as error:
        load_deadiff(installed)
    assert error.value.problem in result.stderr and str(installed) in result.stderr
    assert not (tmp_path / "out.png").exists() and not marker.exists()
    assert not (base / "pwned").exists()
