"""Progress and timing while loading and converting a DEADiff file (deadiff_core; the loader node
drives ComfyUI's progress bar and logs LoadReport.message() from these)."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

import deadiff_fakes
from deadiff_core import load_deadiff
from deadiff_core.checkpoint import is_kept, is_vision
from deadiff_core.convert import HASH_BLOCK, convert


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    folder = tmp_path_factory.mktemp("progress")
    sd = deadiff_fakes.make_official_state_dict(seed=31)
    return sd, deadiff_fakes.write_official_ckpt(folder / "deadiff_v1.ckpt", sd), folder


def kept(sd):
    return [k for k in sd if is_kept(k)]


def stored_bytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def recorder():
    calls = []
    return calls, lambda done, total: calls.append((done, total))


def test_loading_a_ckpt_reports_each_record_and_the_bytes_it_read(official):
    sd, ckpt, _ = official
    calls, progress = recorder()
    model = load_deadiff(ckpt, progress=progress)
    total = len(kept(sd))
    assert calls == [(i, total) for i in range(1, total + 1)], "one call per record read, 1..total"
    report = model.load_report
    assert report.bytes_read == stored_bytes(sd[k] for k in kept(sd)), "both vision copies are read (compared)"
    unique = [k for k in kept(sd) if not (k.startswith("content_blip.") and is_vision(k))]
    assert report.compact_bytes == 2 * sum(sd[k].numel() for k in unique)
    assert report.file_bytes == ckpt.stat().st_size and report.seconds > 0 and not report.is_compact
    assert report.compact_speedup == pytest.approx(report.bytes_read / report.compact_bytes)
    message = report.message()
    assert message.startswith(f"DEADiff: loaded deadiff_v1.ckpt in {report.seconds:.1f} s")
    assert f"about {report.compact_speedup:.1f}x faster" in message


def test_the_estimate_counts_what_the_compact_file_really_holds(official):
    sd, ckpt, folder = official
    compact = folder / "compact.safetensors"
    convert(str(ckpt), str(compact), "fp16", force=True)
    with safe_open(str(compact), framework="pt") as f:
        held = stored_bytes(f.get_tensor(k) for k in f.keys())
    assert load_deadiff(ckpt).load_report.compact_bytes == held
    calls, progress = recorder()
    model = load_deadiff(compact, progress=progress)
    total = len([k for k in kept(sd) if not (k.startswith("content_blip.") and is_vision(k))])
    assert calls == [(i, total) for i in range(1, total + 1)], "the compact file holds the tower once"
    report = model.load_report
    assert report.is_compact and report.compact_speedup is None and report.bytes_read == held
    assert "faster" not in report.message()


def test_two_different_towers_keep_progress_monotone_and_bounded(tmp_path):
    """When the towers differ, the content tower is read again after the comparison: more reads than
    records, but the reported count never passes the total and ends on it."""
    sd = deadiff_fakes.make_official_state_dict(seed=32, identical_vision=False)
    calls, progress = recorder()
    load_deadiff(deadiff_fakes.write_official_ckpt(tmp_path / "twin.ckpt", sd), progress=progress)
    total = len(kept(sd))
    done = [d for d, _ in calls]
    assert all(t == total for _, t in calls) and done == sorted(done) and done[-1] == total
    assert len(calls) > total


def test_converting_reports_records_then_hash_blocks_then_the_write(official, tmp_path):
    sd, ckpt, _ = official
    calls, progress = recorder()
    sizes = convert(str(ckpt), str(tmp_path / "c.safetensors"), "fp16", progress=progress)
    records, blocks = len(kept(sd)), -(-ckpt.stat().st_size // HASH_BLOCK)
    total = records + blocks + 1
    assert calls == [(i, total) for i in range(1, total + 1)]
    assert sizes["seconds"] > 0 and sizes["tensors"] == len(kept(sd)) - sum(
        k.startswith("content_blip.") and is_vision(k) for k in kept(sd)
    )


def test_progress_callbacks_are_optional_and_change_nothing(official, tmp_path):
    _, ckpt, _ = official
    images = torch.rand(1, 40, 40, 3, generator=torch.Generator().manual_seed(1))
    quiet, watched = load_deadiff(ckpt), load_deadiff(ckpt, progress=lambda d, t: None)
    assert torch.equal(quiet.encoder.encode(images, "style"), watched.encoder.encode(images, "style"))
    convert(str(ckpt), str(tmp_path / "a.safetensors"))
    convert(str(ckpt), str(tmp_path / "b.safetensors"), progress=lambda d, t: None)
    with safe_open(str(tmp_path / "a.safetensors"), "pt") as a, safe_open(str(tmp_path / "b.safetensors"), "pt") as b:
        assert a.metadata() == b.metadata() and sorted(a.keys()) == sorted(b.keys())
        assert all(torch.equal(a.get_tensor(k), b.get_tensor(k)) for k in a.keys())
