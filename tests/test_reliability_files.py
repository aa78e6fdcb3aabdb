"""The bad-file corpus (tests/bad_files.py) against the real ComfyUI server (main.py, subprocess).

Each bad file is picked in Load DEADiff Model like a user would: the prompt fails with one clear error
naming the file and what is wrong, no pickle payload ever runs in the server (the marker file they
would create never appears), and the very next prompt, with a good file, gives a result bit-identical
to the one the server gave before any bad file. The hostile files (pickle payloads) are refused as
unsafe (DEADiffUnsafeFileError), naming what their pickle asks for. The rows of docs/reliability.md name these tests.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

import bad_files
from bad_files import BAD_AT_ENCODE, BAD_FILES, GOOD_ODD_FILES, HOSTILE_FILES
from conftest import GraphError, execution_error
from graphs import Graph

pytestmark = pytest.mark.server

SUBFOLDER = "reliability"  # inside models/deadiff: the names the loader lists are "reliability/<file>"
ACCEPTED_SUFFIXES = (".ckpt", ".safetensors", ".sft")  # what Load DEADiff Model lists


def prompt(deadiff_name: str, output: str) -> dict:
    """Load -> encode style and content -> Apply -> one KSampler step -> the latent, bit-exact, to a file."""
    g = Graph()
    tiny = g.node("DEADiffTest_TinySD15", seed=0)
    pos = g.node("CLIPTextEncode", clip=tiny[1], text="a lighthouse")
    neg = g.node("CLIPTextEncode", clip=tiny[1], text="lowres")
    loader = g.node("DEADiffModelLoader", deadiff_name=deadiff_name)
    image = g.node("DEADiffTest_ImageFromSeed", seed=12, width=64, height=48, batch_size=1, channels=3)
    style = g.node("DEADiffStyleEncoder", deadiff=loader, image=image)
    content = g.node("DEADiffContentEncoder", deadiff=loader, image=image)
    apply = g.node(
        "DEADiffApply",
        model=tiny[0],
        deadiff=loader,
        style_weight=1.0,
        content_weight=1.0,
        start_at=0.0,
        end_at=1.0,
        style=style,
        content=content,
    )
    latent = g.node("EmptyLatentImage", width=64, height=64, batch_size=1)
    sample = g.node(
        "KSampler",
        model=apply,
        seed=4,
        steps=2,
        cfg=6.0,
        sampler_name="euler",
        scheduler="normal",
        positive=pos,
        negative=neg,
        latent_image=latent,
        denoise=1.0,
    )
    g.node("DEADiffTest_SaveLatentFile", samples=sample, filename=output)
    return g.prompt


@pytest.fixture(scope="module")
def corpus(comfy_server, tmp_path_factory):
    source = bad_files.good_files(tmp_path_factory.mktemp("corpus-source"), seed=31)
    source["marker"] = comfy_server.base / "pwned"  # what a payload run by the server would create
    folder = comfy_server.base / "models" / "deadiff" / SUBFOLDER
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(source["ckpt"], folder / "good.ckpt")
    made = {case: make(source, folder) for case, (make, *_) in {**BAD_FILES, **BAD_AT_ENCODE}.items()}
    made.update({case: make(source, folder) for case, make in GOOD_ODD_FILES.items()})
    state = {"server": comfy_server, "source": source, "paths": made, "runs": 0}
    state["reference"] = good_run(state)
    yield state
    assert not source["marker"].exists(), "a pickle payload ran inside the server"


def latent_file(server, name: str) -> torch.Tensor:
    return load_file(str(server.base / "output" / name))["samples"]


def good_run(state) -> torch.Tensor:
    server = state["server"]
    state["runs"] += 1
    name = f"reliability_good_{state['runs']}.safetensors"
    entry = server.run(prompt(f"{SUBFOLDER}/good.ckpt", name))
    assert entry["status"]["status_str"] == "success"
    result = latent_file(server, name)
    assert torch.isfinite(result).all()
    return result


def assert_serves_normally(state):
    """The next prompt after a failure: same result, bit for bit, as before any bad file."""
    assert torch.equal(good_run(state), state["reference"]), "the server's result changed after a bad file"


def failing_run(state, case: str) -> dict:
    server, path = state["server"], state["paths"][case]
    entry = server.wait(server.queue(prompt(f"{SUBFOLDER}/{path.name}", f"never_{path.stem}.safetensors")))
    assert entry["status"]["status_str"] == "error", f"{case}: the prompt did not fail"
    error = execution_error(entry)
    assert error is not None, f"{case}: no execution_error in {entry['status']}"
    expected = "DEADiffUnsafeFileError" if case in HOSTILE_FILES else "DEADiffCheckpointError"
    assert error["exception_type"].endswith(expected), error["exception_type"]
    assert path.name in error["exception_message"]
    return error


@pytest.mark.parametrize("case", sorted(c for c, (make, _) in BAD_FILES.items()))
def test_bad_file_gets_one_clear_error_then_the_server_serves_normally(corpus, case):
    path = corpus["paths"][case]
    words = BAD_FILES[case][1]
    if not path.name.endswith(ACCEPTED_SUFFIXES):
        # e.g. ip-adapter_sd15.bin: the loader does not list it, so ComfyUI refuses the prompt before running it
        with pytest.raises(GraphError) as refused:
            corpus["server"].queue(prompt(f"{SUBFOLDER}/{path.name}", "never.safetensors"))
        assert "Value not in list" in str(refused.value) and path.name in str(refused.value)
    else:
        error = failing_run(corpus, case)
        assert error["node_type"] == "DEADiffModelLoader"
        assert words in error["exception_message"], error["exception_message"]
        if case in HOSTILE_FILES:
            assert "Delete it and download deadiff_v1.ckpt again" in error["exception_message"]
    assert not corpus["source"]["marker"].exists(), "a pickle payload ran inside the server"
    assert_serves_normally(corpus)


@pytest.mark.parametrize("case", sorted(BAD_AT_ENCODE))
def test_nan_or_inf_encoder_weights_are_named_by_the_encoder(corpus, case):
    _, branch, words = BAD_AT_ENCODE[case]
    error = failing_run(corpus, case)
    assert error["node_type"] == f"DEADiff{branch.capitalize()}Encoder"
    assert words in error["exception_message"] and "the file is corrupt" in error["exception_message"]
    assert_serves_normally(corpus)


@pytest.mark.parametrize("case", sorted(GOOD_ODD_FILES))
def test_odd_but_valid_files_give_the_same_result_as_the_plain_file(corpus, case):
    """Checkpoints written by pytorch_lightning (the server itself has no Lightning: nothing of it is
    imported or built) and float64 weights give the plain file's result."""
    server, path = corpus["server"], corpus["paths"][case]
    name = f"odd_{path.stem}.safetensors"
    server.run(prompt(f"{SUBFOLDER}/{path.name}", name))
    assert torch.equal(latent_file(server, name), corpus["reference"])
    assert not corpus["source"]["marker"].exists(), "a pickle payload ran inside the server"
