"""Checkpoints written by pytorch_lightning itself (tests/lightning_files.py) load, and give exactly the
model of their plain state_dict: the allowlist holds what Lightning writes, found by listing the file."""

from __future__ import annotations

import zipfile

import pytest
import torch

import bad_files
import lightning_files
from deadiff_core import load_deadiff
from deadiff_core.pickle_policy import ALLOWED, globals_in, judge

IMAGES = torch.rand(2, 40, 56, 3, generator=torch.Generator().manual_seed(3))


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lightning")
    files = bad_files.good_files(folder, seed=8)
    files["lightning"] = lightning_files.write_lightning_ckpt(folder / "lightning.ckpt", files["sd"])
    files["lightning_1x"] = lightning_files.as_lightning_1x(
        lightning_files.write_lightning_ckpt(folder / "lightning_1x.ckpt", files["sd"])
    )
    return files


def tokens(model):
    return torch.cat([model.encoder.encode(IMAGES, "style"), model.encoder.encode(IMAGES, "content")])


def pickle_globals(path) -> set:
    with zipfile.ZipFile(path) as archive:
        data = archive.read(next(n for n in archive.namelist() if n.endswith("/data.pkl")))
    return {name for name, _, _ in globals_in(data)}


def test_the_file_is_what_lightning_writes(written):
    checkpoint = torch.load(written["lightning"], map_location="cpu", weights_only=False)  # our own file
    for key in (
        "epoch",
        "global_step",
        "pytorch-lightning_version",
        "state_dict",
        "loops",
        "callbacks",
        "optimizer_states",
        "lr_schedulers",
        "hyper_parameters",
        "hparams_type",
    ):
        assert key in checkpoint, key
    assert type(checkpoint["hyper_parameters"]).__name__ == "DictConfig"
    assert checkpoint["hyper_parameters"]["model"]["params"]["qformer_config"]["num_query_token"] == 16
    assert any(name.startswith("ModelCheckpoint") for name in checkpoint["callbacks"])
    assert checkpoint["optimizer_states"][0]["state"], "the optimizer state holds tensors"
    assert set(checkpoint["state_dict"]) == set(written["sd"])
    assert all(torch.equal(checkpoint["state_dict"][k], v) for k, v in written["sd"].items())
    names = pickle_globals(written["lightning"])
    assert {"omegaconf.dictconfig.DictConfig", "collections.OrderedDict", "torch._utils._rebuild_tensor_v2"} <= names
    assert names <= ALLOWED, sorted(names - ALLOWED)


def test_lightning_1x_records_are_allowed(written):
    names = pickle_globals(written["lightning_1x"])
    assert {
        "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
        "lightning_fabric.utilities.data.AttributeDict",
        "numpy.dtype",
    } <= names
    assert all(judge(*name.rsplit(".", 1)) is None for name in names), names


@pytest.mark.parametrize("which", ["lightning", "lightning_1x"])
def test_a_lightning_checkpoint_gives_the_model_of_its_state_dict(written, which):
    assert torch.equal(tokens(load_deadiff(written[which])), tokens(load_deadiff(written["safetensors"])))
