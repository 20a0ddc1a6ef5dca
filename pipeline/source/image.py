"""A raw disk image file as a source: exported disks, benchmarks, and restore checks.

An image has no change tracking: every backup of it reads the allocated extents (found with
SEEK_DATA/SEEK_HOLE, so sparse images read fast) and deduplication keeps the repository small.
"""

from __future__ import annotations

import errno
import mmap
import os
from dataclasses import dataclass

from pipeline.extents import Extent
from pipeline.source.base import ChangeIdInvalidError, SourceError


@dataclass(frozen=True)
class ImageFile:
    """Recipe for an ``ImageSource``; the path must be readable where the task runs."""

    path: str

    def open(self) -> ImageSource:
        return ImageSource(self.path)


class ImageSource:
    def __init__(self, path: str) -> None:
        try:
            self._fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise SourceError(
                f"cannot open image {path}: {exc.strerror}", "check the path and permissions"
            ) from None
        self.path = path
        self._size = os.fstat(self._fd).st_size
        # Blocks are views of the page cache: no copy between the kernel and the hash.
        self._map = mmap.mmap(self._fd, self._size, prot=mmap.PROT_READ) if self._size else None
        self._view = memoryview(self._map) if self._map is not None else memoryview(b"")

    @property
    def capacity(self) -> int:
        return self._size

    @property
    def change_id(self) -> str | None:
        return None

    def changed_extents(self, since: str | None) -> list[Extent]:
        if since is not None:
            raise ChangeIdInvalidError(f"image {self.path} has no change tracking", "it is read in full")
        return self._allocated()

    def _allocated(self) -> list[Extent]:
        out: list[Extent] = []
        pos = 0
        while pos < self._size:
            try:
                start = os.lseek(self._fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data past pos
                    break
                if exc.errno == errno.EINVAL:  # file system without SEEK_DATA: all of it is data
                    return [Extent(0, self._size)] if self._size else []
                raise
            end = os.lseek(self._fd, start, os.SEEK_HOLE)
            out.append(Extent(start, min(end, self._size) - start))
            pos = end
        return out

    def read(self, offset: int, length: int) -> memoryview:
        if offset < 0 or offset + length > self._size:
            raise SourceError(
                f"read of {length} bytes at {offset} is outside image {self.path} ({self._size} bytes)",
                "the image changed size during the backup",
            )
        if self._map is not None:
            self._map.madvise(
                mmap.MADV_WILLNEED, offset - offset % mmap.PAGESIZE, length + offset % mmap.PAGESIZE
            )
        return self._view[offset : offset + length]

    def close(self) -> None:
        if self._fd < 0:
            return
        self._view.release()
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # a caller still holds a block view; the map goes with the last one
                pass
        os.close(self._fd)
        self._fd = -1
