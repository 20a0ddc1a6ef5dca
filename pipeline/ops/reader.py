"""Reading a restore point's disk back from its packs: planned, coalesced, verified.

The driver looks every chunk of a manifest up in the index once (``plan_reads``); workers then read
contiguous windows of the disk. Within a window the chunks are grouped by pack and neighbouring
payloads are fetched with one ranged GET (a backup writes a disk's chunks into packs in disk order,
so a window is usually a handful of GETs, not one per chunk). Every chunk is decoded and re-hashed:
a mismatch stops the read with an error naming the chunk, its pack and the restore point.
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.ops.errors import RestoreError
from pipeline.store.chunks import decode_chunk
from pipeline.store.errors import StoreError
from pipeline.store.index import table_entries
from pipeline.store.manifest import DiskManifest
from pipeline.store.repository import Repository

MAX_GAP = 1 << 20  # read through a gap this small rather than issue a second GET
MAX_SPAN = 32 << 20  # but never fetch more than this in one GET


@dataclass(frozen=True)
class BlockRead:
    offset: int  # on the disk
    length: int  # bytes of the disk this block covers
    chunk_id: bytes
    pack_id: str
    pack_offset: int
    pack_length: int
    raw_length: int
    codec: str


@dataclass(frozen=True)
class PackRange:
    pack_id: str
    start: int
    end: int
    reads: tuple[BlockRead, ...]


def plan_reads(repo: Repository, manifest: DiskManifest, point_id: str) -> pa.Table:
    """One row per stored block of the disk with where its payload lives; fails if any is unindexed."""
    located = repo.chunk_index(refresh=True).locate(manifest.chunk_ids)
    missing = located.column("pack_id").null_count
    if missing:
        first = manifest.chunk_ids.filter(located.column("pack_id").is_null().combine_chunks())[0]
        raise RestoreError(
            f"restore point {point_id} disk {manifest.disk_key} references {missing} chunks that are in "
            f"no index segment (first: {first.as_py().hex()})",
            "run `vmpump verify`; this restore point cannot be restored in full",
        )
    return pa.table(
        {
            "offset": manifest.offsets,
            "length": manifest.lengths,
            "chunk_id": manifest.chunk_ids,
            "pack_id": located.column("pack_id"),
            "pack_offset": located.column("offset"),
            "pack_length": located.column("length"),
            "raw_length": located.column("raw_length"),
            "codec": located.column("codec"),
        }
    )


def table_reads(table: pa.Table) -> list[BlockRead]:
    cols = [table.column(name).to_pylist() for name in table.column_names]
    return [BlockRead(*row) for row in zip(*cols, strict=True)]


def coalesce(reads: Sequence[BlockRead], max_gap: int = MAX_GAP, max_span: int = MAX_SPAN) -> list[PackRange]:
    """Group reads by pack and merge payloads that lie close together into one ranged read."""
    by_pack: dict[str, list[BlockRead]] = {}
    for r in reads:
        by_pack.setdefault(r.pack_id, []).append(r)
    ranges: list[PackRange] = []
    for pack_id, group in by_pack.items():
        group.sort(key=lambda r: r.pack_offset)
        start, end, members = group[0].pack_offset, group[0].pack_offset + group[0].pack_length, [group[0]]
        for r in group[1:]:
            r_end = r.pack_offset + r.pack_length
            if r.pack_offset <= end + max_gap and max(end, r_end) - start <= max_span:
                end = max(end, r_end)
                members.append(r)
                continue
            ranges.append(PackRange(pack_id, start, end, tuple(members)))
            start, end, members = r.pack_offset, r_end, [r]
        ranges.append(PackRange(pack_id, start, end, tuple(members)))
    return ranges


def fetch_blocks(
    repo: Repository, reads: Sequence[BlockRead], point_id: str
) -> tuple[list[tuple[int, bytes]], int]:
    """``(disk offset, bytes)`` of every read, by offset (each exactly the block's ``length``), and
    the number of GETs it took."""
    out: dict[int, bytes] = {}
    ranges = coalesce(reads)
    for rng in ranges:
        data: bytes | RestoreError
        try:
            data = read_range(repo, rng.pack_id, rng.start, rng.end - rng.start, point_id)
        except RestoreError as e:  # a lost pack: its chunks may still have copies elsewhere
            data = e
        plain_by_id: dict[bytes, bytes] = {}
        for r in rng.reads:
            plain = plain_by_id.get(r.chunk_id)
            if plain is None:
                plain = plain_by_id[r.chunk_id] = _plaintext(repo, r, data, rng.start, point_id)
            out[r.offset] = fit(plain, r.length)
    return sorted(out.items()), len(ranges)


def _plaintext(
    repo: Repository, r: BlockRead, data: bytes | RestoreError, start: int, point_id: str
) -> bytes:
    try:
        if isinstance(data, RestoreError):
            raise data
        payload = data[r.pack_offset - start : r.pack_offset - start + r.pack_length]
        return verified_plaintext(repo, r, payload, point_id)
    except RestoreError:
        healed = read_other_copy(repo, r.chunk_id, r.pack_id)
        if healed is None:
            raise
        return healed


def read_other_copy(repo: Repository, chunk_id: bytes, bad_pack: str) -> bytes | None:
    """The chunk from another pack, if the index knows one that reads back intact.

    A backup heals a damaged chunk by storing it again in a new pack; the index then holds two
    entries for it and a look-up may still return the damaged one.
    """
    table = repo.chunk_index().table
    rows = table.filter(pc.equal(table.column("chunk_id"), pa.scalar(chunk_id, pa.binary(32))))
    for entry in table_entries(rows):
        if entry.pack_id == bad_pack:
            continue
        try:
            return repo.read_entry(entry)
        except StoreError:
            continue
    return None


def read_range(repo: Repository, pack_id: str, start: int, length: int, point_id: str) -> bytes:
    try:
        data = repo.read_pack_range(pack_id, start, length)
    except StoreError as e:
        raise RestoreError(
            f"cannot read pack {pack_id} of restore point {point_id}: {e.cause}",
            "run `vmpump verify`; " + (e.hint or "check the repository"),
        ) from e
    if len(data) != length:
        raise RestoreError(
            f"pack {pack_id} of restore point {point_id} is shorter than the index says",
            "run `vmpump verify`; the pack is damaged",
        )
    return data


def verified_plaintext(repo: Repository, r: BlockRead, payload: bytes, point_id: str) -> bytes:
    try:
        plain: bytes | None = decode_chunk(r.codec, payload, r.raw_length)
    except Exception:  # zstandard raises its own error type for damaged frames
        plain = None
    if plain is None or len(plain) != r.raw_length or repo.chunk_id(plain) != r.chunk_id:
        raise RestoreError(
            f"chunk {r.chunk_id.hex()} in pack {r.pack_id} (offset {r.pack_offset}) is damaged; "
            f"restore point {point_id} cannot be restored",
            "run `vmpump verify --full` to find every damaged restore point; the next backup re-uploads "
            "the block if its source still has it",
        )
    return plain


def fit(plain: bytes, length: int) -> bytes:
    """A chunk cut or zero-padded to the block's length (disks that shrank or grew, see FORMAT.md)."""
    if len(plain) == length:
        return plain
    return plain[:length] if len(plain) > length else plain + bytes(length - len(plain))


class DiskImageReader:
    """Random reads of one disk of a restore point, with a bounded LRU cache of chunks.

    Thread-safe enough for an NBD server: the cache is guarded, repository reads run unlocked.
    """

    def __init__(
        self, repo: Repository, manifest: DiskManifest, point_id: str, cache_bytes: int = 64 << 20
    ) -> None:
        self.repo, self.manifest, self.point_id = repo, manifest, point_id
        self.capacity = manifest.capacity
        self.block_size = manifest.block_size
        # rows stay in Arrow (a BlockRead per block would cost ~200 bytes each on a big disk)
        self._plan = plan_reads(repo, manifest, point_id).combine_chunks()
        self._offsets: list[int] = self._plan.column("offset").to_pylist()
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_limit = max(1, cache_bytes // self.block_size)
        self._lock = threading.Lock()

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.capacity:
            raise ValueError(f"read of {length} bytes at {offset} is outside the {self.capacity}-byte disk")
        parts = []
        pos, end = offset, offset + length
        while pos < end:
            block = pos - pos % self.block_size
            take = min(end, block + self.block_size) - pos
            data = self._block(block)
            parts.append(bytes(take) if data is None else data[pos - block : pos - block + take])
            pos += take
        return b"".join(parts)

    def _block(self, block: int) -> bytes | None:
        i = bisect.bisect_left(self._offsets, block)
        if i >= len(self._offsets) or self._offsets[i] != block:
            return None  # a hole
        with self._lock:
            data = self._cache.get(block)
            if data is not None:
                self._cache.move_to_end(block)
                return data
        (r,) = table_reads(self._plan.slice(i, 1))
        payload: bytes | RestoreError
        try:
            payload = read_range(self.repo, r.pack_id, r.pack_offset, r.pack_length, self.point_id)
        except RestoreError as e:
            payload = e
        data = fit(_plaintext(self.repo, r, payload, r.pack_offset, self.point_id), r.length)
        with self._lock:
            self._cache[block] = data
            while len(self._cache) > self._cache_limit:
                self._cache.popitem(last=False)
        return data
