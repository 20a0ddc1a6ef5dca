"""A repository in a local (or NFS-mounted) directory: one file per object.

Writes go to a temporary file in the target directory, are fsynced, renamed into place and the
directory is fsynced, so a crash leaves either the old state or the whole new object.
"""

from __future__ import annotations

import errno
import io
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.store.backend import Body, check_key
from pipeline.store.errors import AccessDeniedError, ObjectMissingError, StoreError, StoreFullError

# Temporary files carry this marker; listings skip them (leftovers of a crash mid-write).
_TMP_MARK = ".vmpump-tmp-"


class LocalStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).absolute()
        self.url = self.root.as_uri()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: Body) -> None:
        path = self._path(key)
        tmp = path.with_name(path.name + _TMP_MARK + secrets.token_hex(4))
        parts = [data] if isinstance(data, bytes | memoryview) else data
        with self._os_errors(key):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                # unbuffered: each part goes straight to the kernel, never copied into one body first
                with open(tmp, "wb", buffering=0) as f:
                    for part in parts:
                        _write_all(f, part)
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            _fsync_dir(path.parent)

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


def _write_all(f: io.RawIOBase, part: bytes | memoryview) -> None:
    view = memoryview(part)
    while view:
        written = f.write(view)
        view = view[written:]


def _fsync_dir(path: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
