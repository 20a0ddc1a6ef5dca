"""The CBT correctness guard: re-read a sample of blocks CBT calls unchanged and compare them
with the previous restore point.

Known VMware bugs have made ``QueryChangedDiskAreas`` omit changed areas (after a disk extend,
after some storage vMotions); every incremental built on such an answer silently restores wrong
bytes. A mismatch here means CBT lied: the caller reads the disk in full in the same run and
records why.
"""

from __future__ import annotations

import random
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipeline.source.base import DiskSource
from pipeline.store.chunks import is_all_zero
from pipeline.store.manifest import DiskManifest

MIN_SAMPLE_BLOCKS = 8  # even a tiny share checks a few blocks: a lie is usually a whole area
MAX_SAMPLE_BYTES = 256 << 20  # the guard never costs more than this much extra reading per disk


@dataclass(frozen=True)
class GuardResult:
    sampled: int
    mismatches: tuple[int, ...]  # offsets whose content differs from the previous restore point

    @property
    def lied(self) -> bool:
        return bool(self.mismatches)

    def reason(self) -> str:
        return (
            f"CBT guard: {len(self.mismatches)} of {self.sampled} blocks CBT reported unchanged differ "
            f"from the previous restore point (first at offset {self.mismatches[0]}); read in full"
        )


def sample_unchanged(
    changed: Sequence[int], capacity: int, block_size: int, share: float, seed: int
) -> list[int]:
    """Sorted offsets of a random sample of blocks that are not in ``changed`` (sorted offsets)."""
    blocks = -(-capacity // block_size)
    unchanged = blocks - len(changed)
    want = min(unchanged, max(MIN_SAMPLE_BLOCKS, round(share * blocks)), MAX_SAMPLE_BYTES // block_size)
    if want <= 0:
        return []
    rng = random.Random(seed)
    picked: set[int] = set()
    # rejection sampling is fine while changed blocks are a minority; fall back to enumeration
    if unchanged * 2 >= blocks:
        while len(picked) < want:
            off = rng.randrange(blocks) * block_size
            i = bisect_left(changed, off)
            if i == len(changed) or changed[i] != off:
                picked.add(off)
    else:
        changed_set = set(changed)
        pool = [b * block_size for b in range(blocks) if b * block_size not in changed_set]
        picked.update(rng.sample(pool, want))
    return sorted(picked)


def check_unchanged(
    source: DiskSource,
    previous: DiskManifest,
    offsets: Sequence[int],
    block_size: int,
    chunk_id: Callable[[bytes | memoryview], bytes],
) -> GuardResult:
    """Read ``offsets`` from the source and compare each with the previous manifest's block."""
    mismatches = []
    for off in offsets:
        length = min(block_size, source.capacity - off)
        data = source.read(off, length)
        expected = previous.chunk_at(off)
        if expected is None:
            if not is_all_zero(data):  # a hole that now holds data
                mismatches.append(off)
        elif chunk_id(data) != expected:
            mismatches.append(off)
    return GuardResult(len(offsets), tuple(mismatches))
