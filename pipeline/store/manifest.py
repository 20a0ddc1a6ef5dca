"""Disk manifests: for one disk of one restore point, the chunk id of every non-zero block.

Blocks missing from a manifest are holes (all zero). Every manifest is complete on its own: an
incremental backup writes the previous manifest with its changed blocks replaced (``merge_manifest``),
so restore reads one manifest and never walks a chain.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

MANIFEST_PREFIX = "manifests/"
MANIFEST_SCHEMA = pa.schema([("offset", pa.int64()), ("chunk_id", pa.binary(32)), ("length", pa.int64())])
_META = "vmpump.manifest"


@dataclass
class DiskManifest:
    disk_key: str
    capacity: int
    block_size: int
    change_id: str | None
    table: pa.Table  # MANIFEST_SCHEMA, sorted by offset
    _offsets: list[int] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.table = self.table.cast(MANIFEST_SCHEMA).combine_chunks()
        offsets = self.table.column("offset").to_pylist()
        if any(o % self.block_size for o in offsets) or offsets != sorted(set(offsets)):
            raise ValueError("manifest offsets must be block-aligned, sorted and unique")
        if offsets and (offsets[0] < 0 or offsets[-1] >= self.capacity):
            raise ValueError("manifest offsets must lie inside the disk")
        if not self.table.column("length").equals(_block_lengths(self.table.column("offset"), self)):
            raise ValueError("manifest lengths must be min(block_size, capacity - offset)")
        self._offsets = offsets

    @classmethod
    def from_blocks(
        cls,
        disk_key: str,
        *,
        capacity: int,
        block_size: int,
        change_id: str | None,
        blocks: Mapping[int, bytes] | Iterable[tuple[int, bytes]],
    ) -> DiskManifest:
        """A manifest from ``offset -> chunk id`` pairs (any order); absent offsets are holes."""
        pairs = sorted(blocks.items() if isinstance(blocks, Mapping) else blocks)
        offsets = pa.array([o for o, _ in pairs], pa.int64())
        ids = pa.array([c for _, c in pairs], pa.binary(32))
        return cls._build(disk_key, capacity, block_size, change_id, offsets, ids)

    @classmethod
    def _build(
        cls,
        disk_key: str,
        capacity: int,
        block_size: int,
        change_id: str | None,
        offsets: pa.Array,
        ids: pa.Array,
    ) -> DiskManifest:
        lengths = pc.min_element_wise(pc.subtract(pa.scalar(capacity, pa.int64()), offsets), block_size)
        table = pa.table({"offset": offsets, "chunk_id": ids, "length": lengths}, schema=MANIFEST_SCHEMA)
        return cls(disk_key, capacity, block_size, change_id, table)

    @property
    def offsets(self) -> pa.Array:
        return self.table.column("offset").chunk(0) if self.table.num_rows else pa.array([], pa.int64())

    @property
    def chunk_ids(self) -> pa.Array:
        return self.table.column("chunk_id").chunk(0) if self.table.num_rows else pa.array([], pa.binary(32))

    @property
    def lengths(self) -> pa.Array:
        return self.table.column("length").chunk(0) if self.table.num_rows else pa.array([], pa.int64())

    def __len__(self) -> int:
        return self.table.num_rows

    def chunk_at(self, offset: int) -> bytes | None:
        """The chunk id of the block holding byte ``offset``, or None for a hole."""
        start = offset - offset % self.block_size
        offsets = self._offsets or []
        i = bisect.bisect_left(offsets, start)
        if i < len(offsets) and offsets[i] == start:
            return self.table.column("chunk_id")[i].as_py()
        return None

    def blocks(self) -> Iterator[tuple[int, int, bytes]]:
        """``(offset, length, chunk_id)`` of every stored block, by offset (holes are skipped).

        A chunk shorter than ``length`` (a disk that grew) reads as its bytes then zeros; a longer
        one (a disk that shrank) is cut at ``length``.
        """
        for batch in self.table.to_batches(max_chunksize=65536):
            cols = [batch.column(name).to_pylist() for name in ("offset", "length", "chunk_id")]
            yield from zip(*cols, strict=True)

    def referenced_chunk_ids(self) -> pa.Array:
        """Distinct chunk ids this manifest needs, binary(32)."""
        return pc.unique(self.chunk_ids)

    def stored_bytes(self) -> int:
        """Bytes of the disk covered by non-zero blocks."""
        return int(pc.sum(self.lengths).as_py() or 0)

    def to_arrow(self) -> pa.Table:
        """The table with the disk's identity in its schema metadata (what goes into Parquet)."""
        meta = {
            "format": 1,
            "disk_key": self.disk_key,
            "capacity": self.capacity,
            "block_size": self.block_size,
            "change_id": self.change_id,
        }
        return self.table.replace_schema_metadata({_META: json.dumps(meta)})

    @classmethod
    def from_arrow(cls, table: pa.Table) -> DiskManifest:
        meta = json.loads((table.schema.metadata or {})[_META.encode()])
        if meta.get("format") != 1:
            raise ValueError(f"unknown manifest format {meta.get('format')!r}")
        plain = table.replace_schema_metadata(None)
        return cls(meta["disk_key"], meta["capacity"], meta["block_size"], meta["change_id"], plain)


def _block_lengths(offsets: pa.ChunkedArray | pa.Array, m: DiskManifest) -> pa.ChunkedArray:
    lengths = pc.min_element_wise(pc.subtract(pa.scalar(m.capacity, pa.int64()), offsets), m.block_size)
    return lengths if isinstance(lengths, pa.ChunkedArray) else pa.chunked_array([lengths])


def merge_manifest(
    previous: DiskManifest, changed: Mapping[int, bytes | None], *, capacity: int, change_id: str | None
) -> DiskManifest:
    """The next synthetic full: ``previous`` with ``changed`` blocks replaced (None: now a hole).

    Blocks past a smaller ``capacity`` are dropped; a larger one adds holes until written.
    """
    block_size = previous.block_size
    for offset, chunk_id in changed.items():
        if offset % block_size or not 0 <= offset < capacity:
            raise ValueError(f"changed block offset {offset} is not a block of a {capacity}-byte disk")
        if chunk_id is not None and len(chunk_id) != 32:
            raise ValueError(f"chunk id of block {offset} is not 32 bytes")
    old = previous.table
    keep = pc.and_(
        pc.less(old.column("offset"), capacity),
        pc.invert(pc.is_in(old.column("offset"), value_set=pa.array(list(changed), pa.int64()))),
    )
    kept = old.filter(keep)
    new = sorted((o, c) for o, c in changed.items() if c is not None)
    offsets = pa.chunked_array([*kept.column("offset").chunks, pa.array([o for o, _ in new], pa.int64())])
    ids = pa.chunked_array([*kept.column("chunk_id").chunks, pa.array([c for _, c in new], pa.binary(32))])
    order = pc.sort_indices(offsets)
    return DiskManifest._build(
        previous.disk_key,
        capacity,
        block_size,
        change_id,
        pc.take(offsets, order).combine_chunks(),
        pc.take(ids, order).combine_chunks(),
    )
