"""deadiff_core alone: token sets (mixing, batches, files), routing text, the weights fingerprint."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import deadiff_fakes
from deadiff_core import load_deadiff
from deadiff_core.convert import convert
from deadiff_core.tokens import DEADiffTokens, TokensError, load_tokens, mix, save_tokens
from deadiff_core.sites import SITES
from deadiff_core.routing import Route, Routing, RoutingError


def tokens(seed, items=1, count=16, width=8, source="abc", branch="style", per_latent=False):
    gen = torch.Generator().manual_seed(seed)
    return DEADiffTokens(
        branch,
        torch.randn(items, count, width, generator=gen),
        source,
        per_latent=per_latent,
        references=tuple(f"r{seed}-{i}" for i in range(items)),
        source_name="file.ckpt",
    )


def test_weighted_sum_is_the_normalised_blend():
    a, b, c = tokens(1), tokens(2), tokens(3)
    mixed = mix([a, b, c], [2.0, 1.0, 1.0], "weighted sum")
    torch.testing.assert_close(mixed.for_attention(), 0.5 * a.tokens + 0.25 * b.tokens + 0.25 * c.tokens)
    assert mixed.references == a.references + b.references + c.references and not mixed.per_latent


def test_concatenate_keeps_every_set_scaled_by_its_weight():
    a, b = tokens(1, items=2), tokens(2)
    mixed = mix([a, b], [1.0, 0.5], "concatenate")
    expected = torch.cat([a.tokens.reshape(1, 32, 8), 0.5 * b.tokens], dim=1)
    torch.testing.assert_close(mixed.for_attention(), expected)


def test_per_latent_sets_mix_item_by_item_and_broadcast_single_sets():
    a, b = tokens(1, items=3, per_latent=True), tokens(2)
    mixed = mix([a, b], [1.0, 1.0], "weighted sum")
    assert mixed.per_latent and mixed.for_attention().shape == (3, 16, 8)
    torch.testing.assert_close(mixed.for_attention(), (a.tokens + b.tokens) / 2)
    with pytest.raises(TokensError, match="different batch sizes"):
        mix([a, tokens(3, items=2, per_latent=True)], [1.0, 1.0], "concatenate")


def test_mix_errors_are_clear():
    with pytest.raises(TokensError, match="style and content"):
        mix([tokens(1), tokens(2, branch="content")], [1, 1], "weighted sum")
    with pytest.raises(TokensError, match="different DEADiff files"):
        mix([tokens(1), tokens(2, source="other")], [1, 1], "weighted sum")
    with pytest.raises(TokensError, match="same number of tokens"):
        mix([tokens(1), tokens(2, count=32)], [1, 1], "weighted sum")
    with pytest.raises(TokensError, match="add up to 0"):
        mix([tokens(1), tokens(2)], [0, 0], "weighted sum")
    with pytest.raises(TokensError, match="mode must be"):
        mix([tokens(1)], [1], "multiply")


def test_batch_modes():
    batch = tokens(1, items=3)
    assert batch.batched("concatenate").for_attention().shape == (1, 48, 8)
    torch.testing.assert_close(batch.batched("average").for_attention(), batch.tokens.mean(0, keepdim=True))
    assert torch.equal(batch.batched("one per latent").for_attention(), batch.tokens)
    with pytest.raises(TokensError, match="batch mode must be"):
        batch.batched("sum")


def test_saved_tokens_round_trip_with_metadata(tmp_path):
    original = tokens(4, items=2, per_latent=True, branch="content")
    save_tokens(str(tmp_path / "t.safetensors"), original)
    loaded, meta = load_tokens(str(tmp_path / "t.safetensors"))
    assert torch.equal(loaded.tokens, original.tokens)
    assert (loaded.branch, loaded.source, loaded.per_latent, loaded.references, loaded.source_name) == (
        "content",
        "abc",
        True,
        original.references,
        "file.ckpt",
    )
    assert json.loads(meta["dims"]) == {"references": 2, "tokens": 16, "width": 8}


def test_loading_anything_else_is_refused_clearly(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"")
    with pytest.raises(TokensError, match="cannot be read as a .safetensors"):
        load_tokens(str(path))
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(TokensError, match="not a saved DEADiff style/content"):
        load_tokens(str(path))
    save_tokens(str(path), tokens(1))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    for change, message in (({"format_version": "9"}, "format version '9'"), ({"branch": "colour"}, "branch must be")):
        save_file({"tokens": torch.zeros(1, 16, 8)}, str(path), metadata={**meta, **change})
        with pytest.raises(TokensError, match=message):
            load_tokens(str(path))
    save_file({"tokens": torch.full((1, 16, 8), float("nan"))}, str(path), metadata=meta)
    with pytest.raises(TokensError, match="not finite"):
        load_tokens(str(path))


def test_weights_fingerprint_names_the_weights_not_the_file(tmp_path):
    sd = deadiff_fakes.make_official_state_dict(seed=5)
    ckpt = deadiff_fakes.write_official_ckpt(tmp_path / "a.ckpt", sd)
    convert(str(ckpt), str(tmp_path / "c16.safetensors"), "fp16")
    convert(str(ckpt), str(tmp_path / "c32.safetensors"), "fp32")
    prints = {
        load_deadiff(ckpt).fingerprint,
        load_deadiff(ckpt, dtype=torch.float16).fingerprint,
        load_deadiff(tmp_path / "c16.safetensors").fingerprint,
        load_deadiff(tmp_path / "c32.safetensors").fingerprint,
    }
    assert len(prints) == 1 and len(prints.pop()) == 16
    other = deadiff_fakes.write_official_ckpt(tmp_path / "b.ckpt", deadiff_fakes.make_official_state_dict(seed=6))
    assert load_deadiff(other).fingerprint != load_deadiff(ckpt).fingerprint


def test_routing_text():
    official = Routing.official()
    assert Routing.parse("").routes == official.routes and Routing.parse("  # nothing\n").is_official
    r = Routing.parse("content=off\noutput_3 = style*0.8; input=0.5")
    assert r.route(SITES[6]) is None and r.route(SITES[7]) == Route("style", 0.8)
    assert r.route(SITES[0]) == Route("style", 0.5) and r.route(SITES[9]) == Route("style", 1.0)
    assert r.route(SITES[5]) == Route("content", 0.5), "a bare number turns an 'off' site back on at its branch"
    for text, message in (
        ("x=1", "unknown site or group 'x'"),
        ("input_1", "not TARGET=VALUE"),
        ("input_1=blue", "'blue' is not a number"),
        ("input_1=style*inf", "finite"),
    ):
        with pytest.raises(RoutingError, match=message):
            Routing.parse(text)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([s.name for s in SITES] + ["all", "style", "content", "input", "output"]),
            st.one_of(
                st.just("off"),
                st.sampled_from(["style", "content"]),
                st.floats(-4, 4, allow_nan=False).map(lambda f: f"{f:g}"),
                st.floats(0, 3).map(lambda f: f"content*{f:g}"),
            ),
        ),
        max_size=8,
    )
)
def test_routing_describe_parses_back(entries):
    routing = Routing.parse(", ".join(f"{t}={v}" for t, v in entries))
    assert Routing.parse(routing.describe()).routes == routing.routes
