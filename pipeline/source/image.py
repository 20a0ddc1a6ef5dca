"""A raw disk image file as a source: no CBT, allocated extents from SEEK_DATA / SEEK_HOLE."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.extents import Extent
from pipeline.source.base import ChangeIdInvalidError
from pipeline.source.file import FileTransport


class ImageFileSource:
    def __init__(self, path: str | Path) -> None:
        self._file = FileTransport(path)
        self._capacity = self._file.size

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def change_id(self) -> str | None:
        return None

    def changed_extents(self, since: str | None) -> list[Extent]:
        if since is not None:
            raise ChangeIdInvalidError(
                f"image {self._file.path} has no change tracking", "it is read in full every time"
            )
        return allocated_extents(self._file.path)

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset + length > self._capacity:
            raise ValueError(f"read {offset}+{length} beyond the image ({self._capacity} bytes)")
        return self._file.read(offset, length)

    def close(self) -> None:
        self._file.close()


def allocated_extents(path: str | Path) -> list[Extent]:
    """The data (non-hole) extents of a sparse file; the whole file where holes are not reported."""
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole remains
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append(Extent(start, end - start))
            pos = end
    finally:
        os.close(fd)
    return out
