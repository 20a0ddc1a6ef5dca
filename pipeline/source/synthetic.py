"""A deterministic generated disk, for benchmarks, tests and the demo.

Every block's class (zero, duplicate, compressible, random) and content derive from the seed, the
block index and the generation in which the block last changed, so any process can regenerate any
block without shipping bytes, and generation ``g`` differs from ``g-1`` in about ``change_rate`` of
its 1 MiB regions. The change marker is ``synthetic:<seed>:<generation>`` and changed extents between two
generations are exact, like a truthful CBT.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

import blake3

from pipeline.extents import Extent, merge
from pipeline.source.base import ChangeIdInvalidError, SourceError

GRAIN = 64 << 10  # content is generated in 64 KiB grains so any block size sees the same bytes
CHANGE_UNIT = 1 << 20  # changes come in aligned 1 MiB regions, as guest writes cluster on real disks
_PER_UNIT = CHANGE_UNIT // GRAIN
_DUP_POOL = 8  # distinct region contents shared by every duplicate region
_ALPHABET = bytes(97 + (i % 16) for i in range(256))  # 4 bits of entropy per byte: compresses ~2x


@dataclass(frozen=True)
class SyntheticDisk:
    """The recipe of a generated disk; cheap to pickle, regenerates identical bytes anywhere."""

    size: int
    seed: int = 0
    zero_share: float = 0.3
    duplicate_share: float = 0.1
    compressible_share: float = 0.3
    change_rate: float = 0.01
    generation: int = 0

    def open(self) -> SyntheticSource:
        return SyntheticSource(self)

    def at_generation(self, generation: int) -> SyntheticDisk:
        return SyntheticDisk(
            self.size,
            self.seed,
            self.zero_share,
            self.duplicate_share,
            self.compressible_share,
            self.change_rate,
            generation,
        )


def _unit(*parts: int) -> float:
    """A deterministic number in [0, 1) from integers."""
    h = hashlib.blake2b(b"".join(p.to_bytes(8, "little", signed=True) for p in parts), digest_size=8)
    return int.from_bytes(h.digest(), "little") / 2**64


class SyntheticSource:
    """``DiskSource`` over a ``SyntheticDisk``."""

    def __init__(self, disk: SyntheticDisk) -> None:
        self.disk = disk

    @property
    def capacity(self) -> int:
        return self.disk.size

    @property
    def change_id(self) -> str:
        return f"synthetic:{self.disk.seed}:{self.disk.generation}"

    @cached_property
    def _grains(self) -> int:
        return -(-self.disk.size // GRAIN)

    def _version(self, grain: int) -> int:
        """The last generation (0 for the original) in which the region of ``grain`` changed."""
        d = self.disk
        region = grain // _PER_UNIT
        for g in range(d.generation, 0, -1):
            if _unit(d.seed, region, g, 1) < d.change_rate:
                return g
        return 0

    def _kind(self, grain: int, version: int) -> str:
        """Class of the grain's region: regions, not grains, are zero or duplicate, so blocks are too."""
        d = self.disk
        region = grain // _PER_UNIT
        u = _unit(d.seed, region, version, 2)
        if version > 0 and u < d.zero_share:
            u = d.zero_share + u * (1 - d.zero_share)  # a rewritten region holds data, not zeros
        if u < d.zero_share:
            return "zero"
        u -= d.zero_share
        if u < d.duplicate_share:
            return "duplicate"
        u -= d.duplicate_share
        return "compressible" if u < d.compressible_share else "random"

    def grain_bytes(self, grain: int) -> bytes:
        version = self._version(grain)
        kind = self._kind(grain, version)
        if kind == "zero":
            return bytes(GRAIN)
        if kind == "duplicate":
            # every duplicate region is one of a few shared contents: they deduplicate, across disks too
            pick = int(_unit(self.disk.seed, grain // _PER_UNIT, version, 3) * _DUP_POOL)
            return blake3.blake3(b"dup%d:%d" % (pick, grain % _PER_UNIT)).digest(length=GRAIN)
        data = blake3.blake3(b"%d:%d:%d" % (self.disk.seed, grain, version)).digest(length=GRAIN)
        if kind == "compressible":
            # half text-like, half zero: like a partly used file-system block
            return data[: GRAIN // 2].translate(_ALPHABET) + bytes(GRAIN // 2)
        return data

    def parse_change_id(self, change_id: str) -> int:
        try:
            kind, seed, gen = change_id.split(":")
            if (
                kind != "synthetic"
                or int(seed) != self.disk.seed
                or not 0 <= int(gen) <= self.disk.generation
            ):
                raise ValueError(change_id)
            return int(gen)
        except ValueError:
            raise ChangeIdInvalidError(
                f"change marker {change_id!r} does not belong to this synthetic disk",
                "the disk will be read in full",
            ) from None

    def changed_extents(self, since: str | None) -> list[Extent]:
        # kinds and versions belong to 1 MiB regions: one look per region, not per grain
        size = self.disk.size
        firsts = range(0, self._grains, _PER_UNIT)  # the first grain of every region
        if since is None:
            kept = [g for g in firsts if self._kind(g, self._version(g)) != "zero"]
        else:
            base = self.parse_change_id(since)
            kept = [g for g in firsts if self._version(g) > base]
        return merge(Extent(g * GRAIN, min(CHANGE_UNIT, size - g * GRAIN)) for g in kept)

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.disk.size:
            raise SourceError(
                f"read of {length} bytes at {offset} is outside the {self.disk.size}-byte synthetic disk",
                "this is a bug in the caller",
            )
        first, last = offset // GRAIN, (offset + length - 1) // GRAIN
        parts = [self.grain_bytes(g) for g in range(first, last + 1)]
        buf = b"".join(parts) if len(parts) > 1 else parts[0] if parts else b""
        start = offset - first * GRAIN
        return buf[start : start + length]

    def close(self) -> None:
        pass
