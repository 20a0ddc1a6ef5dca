"""Byte extents of a virtual disk and the arithmetic on them.

An ``Extent`` is a half-open byte range ``[offset, offset + length)``. CBT answers, reads and
block plans are all lists of extents; this module is the one place that merges, clips and aligns
them, so every room agrees on what "covered" means.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Extent:
    offset: int
    length: int

    def __post_init__(self) -> None:
        if self.offset < 0 or self.length < 0:
            raise ValueError(f"extent with negative offset or length: {self.offset}+{self.length}")

    @property
    def end(self) -> int:
        return self.offset + self.length


def merge(extents: Iterable[Extent]) -> list[Extent]:
    """Sorted, non-overlapping, non-adjacent extents covering the same bytes; empty ones dropped."""
    out: list[Extent] = []
    for e in sorted(x for x in extents if x.length > 0):
        if out and e.offset <= out[-1].end:
            last = out[-1]
            out[-1] = Extent(last.offset, max(last.end, e.end) - last.offset)
        else:
            out.append(e)
    return out


def clip(extents: Iterable[Extent], start: int, end: int) -> list[Extent]:
    """The parts of ``extents`` inside ``[start, end)``."""
    out = []
    for e in extents:
        lo, hi = max(e.offset, start), min(e.end, end)
        if hi > lo:
            out.append(Extent(lo, hi - lo))
    return out


def total_bytes(extents: Iterable[Extent]) -> int:
    return sum(e.length for e in merge(extents))


def gaps(extents: Iterable[Extent], start: int, end: int) -> list[Extent]:
    """The parts of ``[start, end)`` that ``extents`` do not cover."""
    out = []
    pos = start
    for e in merge(clip(extents, start, end)):
        if e.offset > pos:
            out.append(Extent(pos, e.offset - pos))
        pos = max(pos, e.end)
    if pos < end:
        out.append(Extent(pos, end - pos))
    return out


def block_offsets(extents: Iterable[Extent], block_size: int, capacity: int) -> list[int]:
    """Offsets of every ``block_size``-aligned block that any extent touches, within ``capacity``.

    CBT reports changes at its own granularity; a block is re-read whole if any byte of it changed.
    """
    if block_size <= 0:
        raise ValueError("block_size must be positive")
    offsets: list[int] = []
    last = -1
    for e in merge(clip(extents, 0, capacity)):
        first = (e.offset // block_size) * block_size
        if first <= last:
            first = last + block_size
        stop = e.end
        for off in range(first, stop, block_size):
            offsets.append(off)
            last = off
    return offsets


def block_runs(offsets: Iterable[int], block_size: int, max_run: int) -> Iterator[Extent]:
    """Group sorted block offsets into contiguous read extents of at most ``max_run`` bytes.

    Large aligned reads keep the transport efficient; the cap bounds the memory one read holds.
    """
    run_start = -1
    run_len = 0
    for off in offsets:
        if run_start >= 0 and off == run_start + run_len and run_len + block_size <= max_run:
            run_len += block_size
            continue
        if run_start >= 0:
            yield Extent(run_start, run_len)
        run_start, run_len = off, block_size
    if run_start >= 0:
        yield Extent(run_start, run_len)
