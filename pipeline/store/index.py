"""The global chunk index: Parquet segment files under ``index/``, read together as one table.

Segments are only ever added (a backup writes one per batch of uploaded packs); the union of all
segments maps each chunk id to the pack, offset and length where its payload lives.
"""

from __future__ import annotations

import bisect
import io
from collections.abc import Iterable, Sequence

import blake3
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.store.chunks import IndexEntry
from pipeline.store.errors import ObjectCorruptError

INDEX_PREFIX = "index/"
INDEX_SCHEMA = pa.schema(
    [
        ("chunk_id", pa.binary(32)),
        ("pack_id", pa.string()),
        ("offset", pa.int64()),
        ("length", pa.int64()),
        ("raw_length", pa.int64()),
        ("codec", pa.string()),
    ]
)


def entries_table(entries: Iterable[IndexEntry]) -> pa.Table:
    rows = list(entries)
    return pa.table(
        {
            "chunk_id": pa.array([e.chunk_id for e in rows], pa.binary(32)),
            "pack_id": pa.array([e.pack_id for e in rows], pa.string()),
            "offset": pa.array([e.offset for e in rows], pa.int64()),
            "length": pa.array([e.length for e in rows], pa.int64()),
            "raw_length": pa.array([e.raw_length for e in rows], pa.int64()),
            "codec": pa.array([e.codec for e in rows], pa.string()),
        },
        schema=INDEX_SCHEMA,
    )


def table_entries(table: pa.Table) -> list[IndexEntry]:
    return [IndexEntry(**row) for row in table.to_pylist()]


def encode_parquet(table: pa.Table) -> tuple[str, bytes]:
    """Parquet bytes and their content name (hex BLAKE3): same table, same object key."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    data = buf.getvalue()
    return blake3.blake3(data).hexdigest(), data


def decode_parquet(key: str, data: bytes) -> pa.Table:
    """The table in a content-named Parquet object, after checking its bytes against its name."""
    name = key.rsplit("/", 1)[-1].removesuffix(".parquet")
    if blake3.blake3(data).hexdigest() != name:
        raise ObjectCorruptError(
            f"{key} does not match its content hash", "run verify; the object is damaged"
        )
    return pq.read_table(io.BytesIO(data))


def segment_key(name: str) -> str:
    return f"{INDEX_PREFIX}{name}.parquet"


class _SortedIds(Sequence[bytes]):
    """A sorted binary(32) column seen as a sequence of bytes, for bisect without copying it out."""

    def __init__(self, column: pa.Array) -> None:
        self._column = column

    def __len__(self) -> int:
        return len(self._column)

    def __getitem__(self, i: int) -> bytes:  # type: ignore[override]
        return self._column[i].as_py()


class ChunkIndex:
    """All index segments as one table sorted by chunk id: point and batch look-ups."""

    def __init__(self, segments: Iterable[pa.Table]) -> None:
        tables = [t.cast(INDEX_SCHEMA) for t in segments]
        table = pa.concat_tables(tables) if tables else INDEX_SCHEMA.empty_table()
        self.table = table.sort_by("chunk_id").combine_chunks()
        self._ids = (
            self.table.column("chunk_id").chunk(0) if self.table.num_rows else pa.array([], pa.binary(32))
        )

    def __len__(self) -> int:
        return self.table.num_rows

    def chunk_ids(self) -> pa.Array:
        """Distinct chunk ids, binary(32)."""
        return pc.unique(self._ids)

    def pack_ids(self) -> set[str]:
        return set(pc.unique(self.table.column("pack_id")).to_pylist())

    def lookup(self, chunk_id: bytes) -> IndexEntry | None:
        ids = _SortedIds(self._ids)
        i = bisect.bisect_left(ids, chunk_id)
        if i < len(ids) and ids[i] == chunk_id:
            return IndexEntry(**self.table.slice(i, 1).to_pylist()[0])
        return None

    def locate(self, chunk_ids: pa.Array) -> pa.Table:
        """Index rows aligned with ``chunk_ids`` (all columns null where a chunk is unknown)."""
        positions = pc.index_in(chunk_ids.cast(pa.binary(32)), value_set=self._ids)
        return self.table.take(positions)
