"""deadiff-convert: official deadiff_v1.ckpt -> compact .safetensors with only what DEADiff adds.

    deadiff-convert models/deadiff/deadiff_v1.ckpt      # writes models/deadiff/deadiff_v1_compact.safetensors
    python -m deadiff_core.convert SRC [DST] [--dtype fp16|fp32] [--force]
    python custom_nodes/ComfyUI-DEADiff/scripts/convert.py models/deadiff/deadiff_v1.ckpt   # from ComfyUI's root

DST defaults to SRC's folder and name with `_compact.safetensors` (next to the input, so the compact
file lands in the same models/deadiff folder); it is written with the mode of any model file (0644
under the usual umask).

The compact file keeps the official key names (so one loader reads both), the vision tower once,
and records the source file's name and sha256 and the inferred dimensions in its metadata. fp16 is
the default (1.43 GB for deadiff_v1: its kept tensors' 716.6 M values x 2 bytes); fp32 conversion
loads bit-identically to the source.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time

import torch
from safetensors.torch import save_file

from .checkpoint import compact_metadata, read_deadiff_tensors
from .errors import DEADiffCheckpointError

DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
COMPACT_SUFFIX = "_compact.safetensors"


def default_destination(src: str) -> str:
    """Next to the input: models/deadiff/deadiff_v1.ckpt -> models/deadiff/deadiff_v1_compact.safetensors."""
    stem = os.path.splitext(os.path.basename(src))[0]
    return os.path.join(os.path.dirname(os.path.abspath(src)), stem + COMPACT_SUFFIX)


def _readable_mode(path: str) -> None:
    """safetensors writes the file owner-only (0600); a model file is world-readable under the usual umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _progress(iterable, total: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:  # plain prints where tqdm is not installed
        for i, item in enumerate(iterable):
            if i % max(1, total // 10) == 0:
                print(f"{desc}: {i}/{total}", file=sys.stderr)
            yield item
        return
    yield from tqdm(iterable, total=total, desc=desc, unit="tensor" if "tensor" in desc else "block")


HASH_BLOCK = 1 << 24


def hash_blocks(path: str) -> int:
    """How many blocks sha256_of reads (its progress steps)."""
    return max(1, -(-os.path.getsize(path) // HASH_BLOCK))


def sha256_of(path: str, on_block=None) -> str:
    """The file's sha256; on_block(done, total) after each 16 MiB block."""
    digest = hashlib.sha256()
    total = hash_blocks(path)
    with open(path, "rb") as f:
        for i in _progress(range(total), total=total, desc="hashing (16 MiB blocks)"):
            digest.update(f.read(HASH_BLOCK))
            if on_block is not None:
                on_block(i + 1, total)
    return digest.hexdigest()


def convert(src: str, dst: str, dtype: str = "fp16", force: bool = False, progress=None) -> dict:
    """Write the compact file; returns {"source_bytes", "compact_bytes", "tensors", "seconds"}.

    progress(done, total) is called after each step: each tensor record read, each 16 MiB block of
    the source hashed, then the write (done rises to total)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError("the destination must differ from the source")
    if os.path.exists(dst) and not force:
        raise FileExistsError(f"{dst} exists; pass --force to overwrite it")
    if not os.path.isdir(os.path.dirname(os.path.abspath(dst))):
        raise ValueError(f"the destination folder {os.path.dirname(os.path.abspath(dst))} does not exist")
    start = time.perf_counter()
    blocks = hash_blocks(src) if os.path.isfile(src) else 1  # a missing source is reported by the reader
    records = 0  # known at the first record read

    def report(done):
        if progress is not None:
            progress(done, records + blocks + 1)

    def on_read(done, total, _nbytes):
        nonlocal records
        records = total
        report(done)

    tensors, config, _ = read_deadiff_tensors(
        src, DTYPES[dtype], progress=lambda keys, total: _progress(keys, total, "reading tensors"), on_read=on_read
    )
    kept = {key: tensors.pop(key).contiguous() for key in sorted(tensors)}
    metadata = compact_metadata(
        config, os.path.basename(src), sha256_of(src, on_block=lambda done, _total: report(records + done))
    )
    tmp = dst + ".partial"
    try:
        save_file(kept, tmp, metadata=metadata)
        _readable_mode(tmp)
        os.replace(tmp, dst)
    except Exception as e:  # disk full, no permission: no half-written file is left behind
        if os.path.exists(tmp):
            os.remove(tmp)
        raise OSError(f"could not write {dst}: {e}") from e
    report(records + blocks + 1)
    return {
        "source_bytes": os.path.getsize(src),
        "compact_bytes": os.path.getsize(dst),
        "tensors": len(kept),
        "seconds": time.perf_counter() - start,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="deadiff-convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="deadiff_v1.ckpt (or a .safetensors of its state_dict)")
    parser.add_argument(
        "dst",
        nargs="?",
        help="the compact .safetensors to write (default: next to SRC, named <SRC name>_compact.safetensors)",
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16", help="storage dtype (default fp16)")
    parser.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    args = parser.parse_args(argv)
    if args.dst is None:
        args.dst = default_destination(args.src)
    if not os.path.isfile(args.src):
        hint = ""
        if not os.path.isabs(args.src) and "custom_nodes" in os.getcwd().split(os.sep):
            hint = (
                " (a relative path is relative to the folder you run this from; from the pack's folder the "
                "models are in ../../models/deadiff/)"
            )
        print(f"deadiff-convert: {args.src}: no such file{hint}", file=sys.stderr)
        return 2
    try:
        sizes = convert(args.src, args.dst, args.dtype, args.force)
    except (DEADiffCheckpointError, OSError, ValueError) as e:
        print(f"deadiff-convert: {e}", file=sys.stderr)
        return 2
    mib = 1 << 20
    print(
        f"{args.src}: {sizes['source_bytes'] / mib:,.1f} MiB -> {args.dst}: {sizes['compact_bytes'] / mib:,.1f} MiB "
        f"({sizes['tensors']} tensors, {args.dtype}) in {sizes['seconds']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
