"""The log of every block a disk task read: where it is and which chunk it is (or a hole)."""

from __future__ import annotations

from array import array

import pyarrow as pa
import pyarrow.compute as pc


class BlockLog:
    """Every block read: 41 bytes a block in flat buffers, not a dict of Python objects, so a
    multi-terabyte disk's log stays a small share of the task."""

    _HOLE = bytes(32)

    def __init__(self) -> None:
        self.offsets = array("q")
        self.ids = bytearray()
        self.holes = bytearray()

    def add(self, offset: int, chunk_id: bytes | None) -> None:
        self.offsets.append(offset)
        self.ids += chunk_id if chunk_id is not None else self._HOLE
        self.holes.append(chunk_id is None)

    def __len__(self) -> int:
        return len(self.offsets)

    def as_mapping(self) -> dict[int, bytes | None]:
        return {
            off: None if hole else bytes(self.ids[i * 32 : i * 32 + 32])
            for i, (off, hole) in enumerate(zip(self.offsets, self.holes, strict=True))
        }

    def stored_blocks(self) -> tuple[pa.Array, pa.Array]:
        """Offsets (sorted) and ids of the non-hole blocks, as Arrow arrays (no per-block objects)."""
        n = len(self.offsets)
        offsets = pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(self.offsets.tobytes())])
        ids = pa.Array.from_buffers(pa.binary(32), n, [None, pa.py_buffer(bytes(self.ids))])
        keep = pc.equal(pa.Array.from_buffers(pa.uint8(), n, [None, pa.py_buffer(bytes(self.holes))]), 0)
        offsets, ids = offsets.filter(keep), ids.filter(keep)
        order = pc.sort_indices(offsets)  # workers log their runs in the order they finish them
        return offsets.take(order), ids.take(order)
