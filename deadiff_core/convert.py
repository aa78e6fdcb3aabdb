"""deadiff-convert: official deadiff_v1.ckpt -> compact .safetensors with only what DEADiff adds.

    deadiff-convert models/deadiff/deadiff_v1.ckpt models/deadiff/deadiff_v1_compact.safetensors
    python -m deadiff_core.convert SRC DST [--dtype fp16|fp32] [--force]

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

import torch
from safetensors.torch import save_file

from .checkpoint import compact_metadata, read_deadiff_tensors
from .errors import DEADiffCheckpointError

DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


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


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    size = os.path.getsize(path)
    chunk = 1 << 24
    with open(path, "rb") as f:
        for _ in _progress(range(0, size, chunk), total=max(1, -(-size // chunk)), desc="hashing (16 MiB blocks)"):
            digest.update(f.read(chunk))
    return digest.hexdigest()


def convert(src: str, dst: str, dtype: str = "fp16", force: bool = False) -> dict:
    """Write the compact file; returns {"source_bytes", "compact_bytes", "tensors"}."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    if os.path.abspath(src) == os.path.abspath(dst):
        raise ValueError("the destination must differ from the source")
    if os.path.exists(dst) and not force:
        raise FileExistsError(f"{dst} exists; pass --force to overwrite it")
    if not os.path.isdir(os.path.dirname(os.path.abspath(dst))):
        raise ValueError(f"the destination folder {os.path.dirname(os.path.abspath(dst))} does not exist")
    tensors, config, _ = read_deadiff_tensors(
        src, DTYPES[dtype], progress=lambda keys, total: _progress(keys, total, "reading tensors"))
    kept = {key: tensors.pop(key).contiguous() for key in sorted(tensors)}
    metadata = compact_metadata(config, os.path.basename(src), sha256_of(src))
    tmp = dst + ".partial"
    try:
        save_file(kept, tmp, metadata=metadata)
        os.replace(tmp, dst)
    except Exception as e:  # disk full, no permission: no half-written file is left behind
        if os.path.exists(tmp):
            os.remove(tmp)
        raise OSError(f"could not write {dst}: {e}") from e
    return {"source_bytes": os.path.getsize(src), "compact_bytes": os.path.getsize(dst), "tensors": len(kept)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="deadiff-convert", description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="deadiff_v1.ckpt (or a .safetensors of its state_dict)")
    parser.add_argument("dst", help="the compact .safetensors to write")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16", help="storage dtype (default fp16)")
    parser.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    args = parser.parse_args(argv)
    try:
        sizes = convert(args.src, args.dst, args.dtype, args.force)
    except (DEADiffCheckpointError, OSError, ValueError) as e:
        print(f"deadiff-convert: {e}", file=sys.stderr)
        return 2
    mib = 1 << 20
    print(f"{args.src}: {sizes['source_bytes'] / mib:,.1f} MiB -> {args.dst}: {sizes['compact_bytes'] / mib:,.1f} MiB "
          f"({sizes['tensors']} tensors, {args.dtype})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
