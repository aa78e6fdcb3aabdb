"""What loading a DEADiff file cost, and what the compact file would save: the loader's log line.

The estimate for a file that is not already compact compares bytes: loading reads `bytes_read`
bytes of tensors from it (for the official .ckpt: both vision towers, since they are compared, in
the file's mixed fp16/fp32: 3.16 GB by the official key list), while the compact fp16 file that
deadiff-convert writes holds the kept tensors once, at 2 bytes each (1.43 GB): 2.2x. For a file of that size reading
dominates the load, and the .ckpt's records also go through zip checksums, a copy and the tower
comparison that the compact file skips, so the real gain is larger (bench/bench_core.py measures
both and prints this estimate next to the measurement; a small file's fixed costs make it smaller).
"""

from __future__ import annotations

from dataclasses import dataclass

COMPACT_BYTES_PER_VALUE = 2  # deadiff-convert's default dtype, fp16


@dataclass(frozen=True)
class LoadReport:
    name: str  # the file's name, for the log line
    seconds: float  # reading the file and building the modules
    file_bytes: int  # the file's size on disk
    bytes_read: int  # tensor bytes read from it
    compact_bytes: int  # tensor bytes of the compact fp16 file made from it
    is_compact: bool  # the file is already one of ours

    @property
    def compact_speedup(self) -> float | None:
        """About how many times faster the compact file loads (more for a large file); None for a compact file."""
        if self.is_compact or self.compact_bytes <= 0:
            return None
        return self.bytes_read / self.compact_bytes

    def message(self) -> str:
        gb = 1e9
        line = (
            f"DEADiff: loaded {self.name} in {self.seconds:.1f} s "
            f"({self.bytes_read / gb:.2f} GB of tensors read from a {self.file_bytes / gb:.2f} GB file)"
        )
        speedup = self.compact_speedup
        if speedup is None:
            return line
        return (
            f"{line}; the compact file from deadiff-convert would load about {speedup:.1f}x faster or more "
            f"({self.compact_bytes / gb:.2f} GB of tensors to read instead of {self.bytes_read / gb:.2f} GB)"
        )
