"""Reading DEADiff files: every accepted format gives the same model, every bad file one clear error,
and no file can run code."""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import bad_files
import deadiff_fakes
from bad_files import BAD_FILES, RunsCode
from bad_files import nan_encoder as _nan
from bad_files import write as _write
from deadiff_core import DEADiffCheckpointError, load_deadiff
from deadiff_core.checkpoint import read_deadiff_tensors
from deadiff_core.convert import main as convert_main
from deadiff_core.errors import DEADiffUnsafeFileError

IMAGES = torch.rand(2, 50, 70, 3, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return bad_files.good_files(tmp_path_factory.mktemp("formats"), seed=21)


def tokens(model):
    return torch.cat([model.encoder.encode(IMAGES, "style"), model.encoder.encode(IMAGES, "content")])


# ------------------------------------------------------------------ formats


def test_ckpt_safetensors_and_compact_give_the_same_tokens(files, capsys):
    folder = files["folder"]
    from_ckpt = tokens(load_deadiff(files["ckpt"]))
    torch.testing.assert_close(tokens(load_deadiff(files["safetensors"])), from_ckpt, rtol=0, atol=0)
    fp32, fp16 = folder / "compact32.safetensors", folder / "compact16.safetensors"
    assert convert_main([str(files["ckpt"]), str(fp32), "--dtype", "fp32"]) == 0
    assert convert_main([str(files["ckpt"]), str(fp16)]) == 0
    printed = capsys.readouterr().out
    assert "MiB ->" in printed and "fp16" in printed
    assert torch.equal(tokens(load_deadiff(fp32)), from_ckpt), "fp32 compact must load bit-identically"
    half = tokens(load_deadiff(fp16))
    assert ((half - from_ckpt).abs().max() / from_ckpt.abs().max()) < 5e-3, "fp16 compact: within fp16 rounding"
    assert not torch.equal(half, from_ckpt)


def test_compact_holds_only_deadiff_tensors_with_metadata(files):
    folder = files["folder"]
    out = folder / "meta.safetensors"
    assert convert_main([str(files["ckpt"]), str(out), "--force"]) == 0
    kept = load_file(str(out))
    assert not any(
        k.startswith(
            (
                "model.diffusion_model.input_blocks.0",
                "first_stage_model.",
                "cond_stage_model.",
                "content_blip.visual_encoder.",
                "ctx_embeddings",
            )
        )
        for k in kept
    )
    assert not any(".cls." in k or "itm_head" in k or "position_ids" in k for k in kept)
    assert sum(".i_to_" in k for k in kept) == 32
    assert all(v.dtype == torch.float16 for v in kept.values())
    from safetensors import safe_open

    meta = safe_open(str(out), "pt").metadata()
    assert meta["format"] == "deadiff-compact" and meta["format_version"] == "1"
    assert meta["source_file"] == "deadiff_v1.ckpt" and len(meta["source_sha256"]) == 64
    dims = json.loads(meta["dims"])
    assert dims["qformer_hidden"] == 64 and dims["vision_layers"] == 2 and dims["site_widths"]["middle_0"] == 128
    assert os.path.getsize(out) < os.path.getsize(files["ckpt"]) / 2


def test_convert_refuses_to_overwrite_and_reports_bad_sources(files, tmp_path, capsys):
    existing = tmp_path / "exists.safetensors"
    existing.write_bytes(b"keep me")
    assert convert_main([str(files["ckpt"]), str(existing)]) == 2
    assert existing.read_bytes() == b"keep me"
    assert "--force" in capsys.readouterr().err
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    assert convert_main([str(empty), str(tmp_path / "out.safetensors")]) == 2
    assert "empty" in capsys.readouterr().err


# ------------------------------------------------------------------ shapes come from the file


@settings(max_examples=15, deadline=None)
@given(
    vision_width=st.sampled_from([64, 128]),
    vision_layers=st.integers(1, 3),
    patch=st.sampled_from([16, 28, 56]),
    hidden=st.sampled_from([64, 128]),
    layers=st.integers(1, 3),
    intermediate=st.sampled_from([96, 256]),
    queries=st.integers(1, 20),
    channels=st.sampled_from([8, 24]),
)
def test_dimensions_are_inferred_from_shapes(
    tmp_path_factory, vision_width, vision_layers, patch, hidden, layers, intermediate, queries, channels
):
    sd = deadiff_fakes.make_official_state_dict(
        seed=1,
        frozen_parts=False,
        vision_width=vision_width,
        vision_layers=vision_layers,
        patch_size=patch,
        image_size=patch * 4,
        qformer_hidden=hidden,
        qformer_layers=layers,
        qformer_intermediate=intermediate,
        num_query_tokens=queries,
        vocab_size=4200,
        max_positions=8,
        model_channels=channels,
    )
    path = deadiff_fakes.write_official_safetensors(tmp_path_factory.mktemp("dims") / "d.safetensors", sd)
    _, c, _ = read_deadiff_tensors(str(path))
    dims = (c.vision_width, c.vision_layers, c.patch_size, c.image_size)
    assert dims == (vision_width, vision_layers, patch, patch * 4)
    assert (c.qformer_hidden, c.qformer_layers, c.qformer_intermediate) == (hidden, layers, intermediate)
    assert (c.num_query_tokens, c.vocab_size, c.max_positions, c.encoder_hidden) == (queries, 4200, 8, vision_width)
    assert c.context_dim == hidden and c.proj_intermediate == 4 * hidden
    assert sorted(set(c.site_widths.values())) == [channels, 2 * channels, 4 * channels]
    assert (c.vision_heads, c.qformer_heads) == (vision_width // 64, hidden // 64)


# ------------------------------------------------------------------ bad files (the corpus: tests/bad_files.py)


def test_pickle_payloads_never_run(files, tmp_path):
    """The hostile corpus has its own tests (tests/test_hostile_files.py); here the three container
    formats with the simplest payload: each refused as unsafe, by name, and nothing runs."""
    marker = tmp_path / "pwned"
    evil_ckpt = tmp_path / "evil.ckpt"  # a real torch zip DEADiff checkpoint whose extras carry the payload
    torch.save({"state_dict": dict(files["sd"]), "callbacks": RunsCode(marker)}, evil_ckpt)
    legacy = tmp_path / "legacy.ckpt"  # torch's legacy (non-zip) format
    torch.save(
        {"state_dict": {"x": torch.zeros(1)}, "hook": RunsCode(marker)}, legacy, _use_new_zipfile_serialization=False
    )
    bare = _write(tmp_path / "bare.ckpt", pickle.dumps(RunsCode(marker)))
    for path in (evil_ckpt, legacy, bare):
        with pytest.raises(DEADiffUnsafeFileError, match=f"is unsafe: its pickle names {os.system.__module__}.system"):
            load_deadiff(path)
    assert not marker.exists(), "a pickle payload ran"


def test_nan_in_the_encoder_weights_is_named_at_encode(files, tmp_path):
    sd = dict(files["sd"])
    _nan(sd)
    path = deadiff_fakes.write_official_safetensors(tmp_path / "nan_encoder.safetensors", sd)
    model = load_deadiff(path)
    with pytest.raises(DEADiffCheckpointError, match="nan_encoder.safetensors: weight .*style.*contains NaN"):
        model.encoder.encode(IMAGES, "style")


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_get_one_clear_error(files, tmp_path, case):
    make, expected = BAD_FILES[case]
    path = make(files, tmp_path)
    with pytest.raises(DEADiffCheckpointError) as error:
        load_deadiff(path)
    message = str(error.value)
    assert os.path.basename(str(path)) in message
    assert expected in message


def test_zip_without_data_is_corrupt(tmp_path):
    path = tmp_path / "hollow.ckpt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/version", "3")
    with pytest.raises(DEADiffCheckpointError, match="truncated or corrupt"):
        load_deadiff(path)


def test_state_dict_at_top_level_is_accepted(files, tmp_path):
    buffer = io.BytesIO()
    torch.save(files["sd"], buffer)
    path = _write(tmp_path / "plain_state_dict.pt", buffer.getvalue())
    assert load_deadiff(path).config.num_query_tokens == 16


# ------------------------------------------------------------------ the fakes are the official layout


def test_fakes_at_full_size_reproduce_the_official_key_list():
    """Every key, shape and dtype of tests/data/deadiff_checkpoint_keys.tsv, from the generator's formulas."""
    generated = deadiff_fakes.official_shapes(**deadiff_fakes.FULL_SIZE)
    frozen = {k for k in (row[0] for row in deadiff_fakes.official_table()) if k not in generated}
    assert len(generated) + len(frozen) == 2562
    for key, shape, dtype in deadiff_fakes.official_table():
        if key in generated:
            assert generated[key] == (shape, dtype), key
    assert all(
        k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.")) or "." not in k
        for k in frozen
    )
    assert not any(".i_to_" in k for k in frozen)


# ------------------------------------------------------------------ how a .ckpt is read


def test_only_the_kept_records_of_a_ckpt_are_read(files, tmp_path):
    """The frozen UNet / VAE / text encoder records are never touched: a .ckpt without them loads."""
    source, hollow = zipfile.ZipFile(files["ckpt"]), tmp_path / "hollow_unet.ckpt"
    from deadiff_core.checkpoint import is_kept

    kept = {k for k in files["sd"] if is_kept(k)}  # incl. the second vision copy, read to compare
    sd_keys = list(files["sd"])
    names = source.namelist()
    pkl = next(n for n in names if n.endswith("data.pkl"))
    from deadiff_core.checkpoint import _ZipCheckpoint

    lazy = _ZipCheckpoint(str(files["ckpt"]))._lazy
    needed = {f"{pkl[: -len('data.pkl')]}data/{lazy[k].key}" for k in kept}
    dropped = 0
    with zipfile.ZipFile(hollow, "w") as out:
        for name in names:
            if "/data/" in name and name not in needed:
                dropped += 1
                continue
            out.writestr(source.getinfo(name), source.read(name))
    assert dropped >= len([k for k in sd_keys if k.startswith("model.diffusion_model.input_blocks.0")])
    assert torch.equal(tokens(load_deadiff(hollow)), tokens(load_deadiff(files["ckpt"])))
    with pytest.raises(Exception):  # noqa: B017  (any failure will do: the dropped records are gone)
        torch.load(hollow, weights_only=False)


def test_a_safetensors_file_is_recognised_whatever_its_name(files, tmp_path):
    renamed = _write(tmp_path / "deadiff_v1.ckpt", files["safetensors"].read_bytes())
    assert torch.equal(tokens(load_deadiff(renamed)), tokens(load_deadiff(files["safetensors"])))


# ------------------------------------------------------------------ dtypes


def test_loading_in_half_precision_casts_every_tensor_and_encodes_close_to_fp32(files):
    full = load_deadiff(files["ckpt"])
    for dtype in (torch.float16, torch.bfloat16):
        half = load_deadiff(files["ckpt"], dtype=dtype)
        assert {p.dtype for p in half.parameters()} == {dtype}
        out = half.encoder.encode(IMAGES, "content")
        assert out.dtype == dtype
        reference = full.encoder.encode(IMAGES, "content")
        assert ((out.float() - reference).abs().max() / reference.abs().max()) < 5e-2
        k, v = half.site_projections.projections("output_11")
        assert k.dtype == v.dtype == dtype and k.shape == (32, 64)


def test_compact_files_of_another_format_version_are_refused(files, tmp_path):
    out = tmp_path / "compact.safetensors"
    assert convert_main([str(files["safetensors"]), str(out), "--dtype", "fp32"]) == 0
    tensors = load_file(str(out))
    from safetensors import safe_open

    meta = dict(safe_open(str(out), "pt").metadata())
    meta["format_version"] = "99"
    save_file(tensors, str(tmp_path / "future.safetensors"), metadata=meta)
    with pytest.raises(
        DEADiffCheckpointError, match="future.safetensors: is a deadiff-compact file of format version '99'"
    ):
        load_deadiff(tmp_path / "future.safetensors")


def test_convert_reports_a_missing_destination_folder(files, tmp_path, capsys):
    out = tmp_path / "no" / "such" / "folder" / "compact.safetensors"
    assert convert_main([str(files["ckpt"]), str(out)]) == 2
    assert f"the destination folder {out.parent} does not exist" in capsys.readouterr().err
    assert not out.parent.exists()
