"""Direct-file transport: a datastore mounted on the proxy (NFS), read with ``os.pread``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pipeline.source.base import SourceError


class FileTransport:
    """Exact-length positional reads of one local file; thread-safe (pread has no shared offset)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise SourceError(
                f"cannot open {self.path}: {exc.strerror}",
                "check the datastore mount map (datastore name → local mount path) and permissions",
            ) from exc

    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def read(self, offset: int, length: int) -> bytes:
        if length == 0:
            return b""
        data = os.pread(self._fd, length, offset)
        if len(data) == length:
            return data
        parts = [data]
        got = len(data)
        while got < length:  # pread may return short on network filesystems
            more = os.pread(self._fd, length - got, offset + got)
            if not more:
                raise SourceError(f"{self.path} ended at {offset + got}, wanted {offset}+{length}")
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def mounted_path(mounts: Mapping[str, str | Path], datastore: str, path_in_datastore: str) -> Path:
    """Where ``[datastore] path`` lives on this machine, given datastore name → mount point."""
    if datastore not in mounts:
        raise SourceError(
            f"datastore {datastore!r} has no local mount configured",
            f"add {datastore}: <mount path> to the file transport's datastore mounts, or use transport http",
        )
    return Path(mounts[datastore]) / path_in_datastore
