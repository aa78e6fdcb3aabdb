"""deadiff_core built from a host's layer classes (`operations`), as ComfyUI's nodes build it.

The host here is a plain stand-in with the four layer classes (subclasses of torch.nn's that record
every call and, like ComfyUI's cast-on-call layers, take their weight to the input's dtype): no
ComfyUI is involved. tests/test_model_management.py checks the same with ComfyUI's comfy.ops.
"""

from __future__ import annotations

import types

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import deadiff_fakes
import reference_deadiff as ref
from deadiff_core import load_deadiff
from deadiff_core.attention import image_keys_values

CALLS: list[str] = []


class Linear(nn.Linear):
    def forward(self, x):
        CALLS.append("Linear")
        return F.linear(x, self.weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))


class Conv2d(nn.Conv2d):
    def forward(self, x):
        CALLS.append("Conv2d")
        return super().forward(x)


class LayerNorm(nn.LayerNorm):
    def forward(self, x):
        CALLS.append("LayerNorm")
        return super().forward(x)


class Embedding(nn.Embedding):
    def forward(self, x):
        CALLS.append("Embedding")
        return super().forward(x)


HOST = types.SimpleNamespace(Linear=Linear, Conv2d=Conv2d, LayerNorm=LayerNorm, Embedding=Embedding)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    sd = deadiff_fakes.make_official_state_dict(seed=13)
    path = deadiff_fakes.write_official_safetensors(tmp_path_factory.mktemp("ops") / "deadiff.safetensors", sd)
    return sd, path


def test_every_layer_is_the_hosts_and_the_tokens_are_unchanged(files):
    sd, path = files
    plain, hosted = load_deadiff(path), load_deadiff(path, operations=HOST)
    host_types, torch_types = (Linear, Conv2d, LayerNorm, Embedding), (nn.Linear, nn.Conv2d, nn.LayerNorm, nn.Embedding)
    layers = [m for m in hosted.modules() if isinstance(m, torch_types)]
    assert layers and all(isinstance(m, host_types) for m in layers)
    assert not any(isinstance(m, host_types) for m in plain.modules())
    assert sum(isinstance(m, Embedding) for m in layers) >= 3 and any(isinstance(m, Conv2d) for m in layers)
    images = torch.rand(2, 64, 96, 3, generator=torch.Generator().manual_seed(0))
    for branch in ("style", "content"):
        CALLS.clear()
        tokens = hosted.encoder.encode(images, branch)
        assert {"Linear", "Conv2d", "LayerNorm", "Embedding"} <= set(CALLS), (
            "the forward goes through the host's layers"
        )
        assert torch.equal(tokens, plain.encoder.encode(images, branch))
        assert ((tokens - ref.encode(sd, images, branch)).abs().max() / tokens.abs().max()) < 1e-5


def test_image_keys_and_values_are_computed_by_calling_the_site_layers(files):
    _, path = files
    hosted = load_deadiff(path, operations=HOST)
    i_to_k, i_to_v = hosted.site_projections.layers("output_11")
    tokens = torch.randn(1, 16, hosted.config.context_dim, dtype=torch.float64)
    CALLS.clear()
    k, v = image_keys_values(tokens, i_to_k, i_to_v, 0.5)
    assert CALLS == ["Linear", "Linear"] and k.dtype == torch.float64, "weights brought to the tokens by the layers"
    weight_k, weight_v = hosted.site_projections.projections("output_11")
    torch.testing.assert_close(k, 0.5 * tokens @ weight_k.double().T)
    torch.testing.assert_close(v, 0.5 * tokens @ weight_v.double().T)


def test_encoding_where_the_host_says(files):
    """A host that keeps weights away from the compute device passes device and dtype to encode."""
    _, path = files
    hosted = load_deadiff(path, operations=HOST)
    images = torch.rand(1, 40, 40, 3)
    tokens = hosted.encoder.encode(images, "style", device=torch.device("cpu"), dtype=torch.float32)
    assert tokens.device.type == "cpu" and tokens.dtype == torch.float32
