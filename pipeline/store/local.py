"""A repository in a local (or NFS-mounted) directory: one file per object.

Writes go to a temporary file in the target directory, are fsynced, renamed into place and the
directory is fsynced, so a crash leaves either the old state or the whole new object. Objects of a
MiB or more (packs) bypass the page cache with O_DIRECT where the file system supports it.
"""

from __future__ import annotations

import errno
import mmap
import os
import secrets
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from pipeline.store.backend import Body, check_key
from pipeline.store.errors import AccessDeniedError, ObjectMissingError, StoreError, StoreFullError

# Temporary files carry this marker; listings skip them (leftovers of a crash mid-write).
_TMP_MARK = ".vmpump-tmp-"


DIRECT_MIN = 1 << 20  # objects this large (packs) are written with O_DIRECT where the FS allows
DIRECT_ALIGN = 4096  # O_DIRECT wants block-aligned memory, offsets and lengths
_STAGING = 4 << 20  # per writing thread: one aligned buffer, reused
_local = threading.local()


class LocalStore:
    def __init__(self, root: str | os.PathLike[str], *, direct_io: bool = True) -> None:
        self.root = Path(root).absolute()
        self.url = self.root.as_uri()
        self._direct = direct_io and hasattr(os, "O_DIRECT")

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: Body, *, self_checking: bool = False) -> None:
        path = self._path(key)
        tmp = path.with_name(path.name + _TMP_MARK + secrets.token_hex(4))
        parts = [data] if isinstance(data, bytes | memoryview) else data
        with self._os_errors(key):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                if not (self._direct and _body_size(parts) >= DIRECT_MIN and self._put_direct(tmp, parts)):
                    # unbuffered: each part goes straight to the kernel, never joined into one body
                    with open(tmp, "wb", buffering=0) as f:
                        for part in parts:
                            _write_all(f.fileno(), part)
                        os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            _fsync_dir(path.parent)

    def _put_direct(self, tmp: Path, parts: Sequence[bytes | memoryview]) -> bool:
        """Write ``parts`` with O_DIRECT through an aligned staging buffer; False when the file
        system refuses O_DIRECT (tmpfs, some FUSE), and from then on this store does not try.

        A buffered write copies every byte into the page cache, and the kernel then accounts,
        writes back and reclaims those pages: on a small proxy that costs several times the CPU of
        this copy into an aligned buffer. Packs are written once and read rarely; they skip the cache.
        """
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_DIRECT, 0o644)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            self._direct = False
            return False
        refused = False
        try:
            staging = _staging_buffer()
            size = filled = 0
            for part in parts:
                view = memoryview(part).cast("B")
                while view:
                    n = min(len(view), len(staging) - filled)
                    staging[filled : filled + n] = view[:n]
                    filled, view = filled + n, view[n:]
                    if filled == len(staging):
                        _write_all(fd, staging)
                        size, filled = size + filled, 0
            if filled:
                padded = -(-filled // DIRECT_ALIGN) * DIRECT_ALIGN  # O_DIRECT writes whole blocks
                staging[filled:padded] = bytes(padded - filled)
                _write_all(fd, staging[:padded])
                os.ftruncate(fd, size + filled)
            os.fsync(fd)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            refused = True  # refused at write time: write it again through the page cache
        finally:
            os.close(fd)
        if refused:
            self._direct = False
            tmp.unlink(missing_ok=True)
        return not refused

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        with self._os_errors(key), open(self._path(key), "rb") as f:
            f.seek(offset)
            return f.read() if length is None else f.read(length)

    def size(self, key: str) -> int | None:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError:
            return None

    def list_keys(self, prefix: str = "") -> list[str]:
        base = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root
        keys = []
        for dirpath, _dirs, files in os.walk(base):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in files:
                key = name if rel == "." else f"{rel}/{name}"
                if _TMP_MARK not in name and key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        with self._os_errors(key):
            self._path(key).unlink(missing_ok=True)

    @contextmanager
    def _os_errors(self, key: str) -> Iterator[None]:
        try:
            yield
        except FileNotFoundError as e:
            raise ObjectMissingError(
                f"object {key} is missing in {self.url}", "the repository is incomplete; run verify"
            ) from e
        except PermissionError as e:
            raise AccessDeniedError(
                f"permission denied on {self.root}", "check the directory's owner and mode"
            ) from e
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreFullError(
                    f"no space left on the file system of {self.root}",
                    "free space or point the repository elsewhere",
                ) from e
            raise StoreError(f"cannot access {key} in {self.root}: {e.strerror}", "check the path") from e


def _body_size(parts: Sequence[bytes | memoryview]) -> int:
    return sum(memoryview(p).nbytes for p in parts)


def _staging_buffer() -> memoryview:
    """This thread's page-aligned staging buffer (an anonymous mapping: aligned by the kernel)."""
    buf = getattr(_local, "staging", None)
    if buf is None:
        buf = _local.staging = memoryview(mmap.mmap(-1, _STAGING))
    return buf


def _write_all(fd: int, part: bytes | memoryview) -> None:
    """Write all of ``part`` (os.write may take less than it is given)."""
    view = memoryview(part)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(path: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
