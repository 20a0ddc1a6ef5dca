"""Where restored bytes go, behind a small seam.

- A *random-access* target (a raw image file) takes blocks in any order from any process on this
  host: restore tasks write their shares in parallel, and holes are never written (sparse file).
- A *stream* target (an HTTP PUT to a datastore's ``/folder`` URL) takes the whole disk as one
  ordered byte stream, holes included.

Either way the result appears complete only at ``commit``: a file is written as ``<name>.partial``
and renamed at the end; a PUT sends ``Content-Length`` up front, so a stream cut short by an error
is an incomplete request the server does not store as a finished file.
"""

from __future__ import annotations

import errno
import http.client
import mmap
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from pipeline.ops.errors import RestoreTargetError

PARTIAL_SUFFIX = ".partial"


class BlockWriter(Protocol):
    def write(self, offset: int, data: bytes | memoryview) -> None: ...

    def close(self) -> None: ...


class RandomAccessTarget(Protocol):
    description: str

    def begin(self, capacity: int) -> None: ...

    def open_writer(self) -> BlockWriter:
        """A writer usable in this process (picklable targets reopen it in worker processes)."""
        ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class StreamTarget(Protocol):
    description: str

    def send(self, capacity: int, stream: Iterable[bytes | memoryview]) -> None:
        """Send exactly ``capacity`` bytes; raises if the receiver refuses them."""
        ...


RestoreTarget = RandomAccessTarget | StreamTarget


@dataclass(frozen=True)
class FileTarget:
    """A raw, sparse image file. ``path`` appears only once every block is written and synced."""

    path: Path
    overwrite: bool = False

    @property
    def description(self) -> str:
        return str(self.path)

    @property
    def partial(self) -> Path:
        return self.path.with_name(self.path.name + PARTIAL_SUFFIX)

    def begin(self, capacity: int) -> None:
        if self.path.exists() and not self.overwrite:
            raise RestoreTargetError(f"{self.path} already exists", "choose another path or pass --overwrite")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.partial, "wb") as f:
                f.truncate(capacity)  # holes stay unallocated: the image is sparse
        except OSError as e:
            raise RestoreTargetError(
                f"cannot create {self.partial}: {e.strerror}", "check the directory"
            ) from e

    def open_writer(self) -> BlockWriter:
        return _FileWriter(os.open(self.partial, os.O_WRONLY), _open_direct(self.partial))

    def commit(self) -> None:
        fd = os.open(self.partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        self.partial.unlink(missing_ok=True)


DIRECT_ALIGN = 4096


def _open_direct(path: Path) -> int | None:
    """A second descriptor with O_DIRECT, where the OS and file system offer it (not tmpfs)."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        return os.open(path, os.O_WRONLY | flag)
    except OSError:
        return None


class _FileWriter:
    """pwrite at offsets. Aligned blocks go through O_DIRECT: a restore writes each byte once and
    never reads it back, so the page cache only costs (measured here: first-touch page-cache writes
    ran at a third of the speed of direct ones) and would evict the packs being read."""

    def __init__(self, fd: int, direct_fd: int | None) -> None:
        self.fd, self.direct_fd = fd, direct_fd
        self._local = threading.local()

    def write(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        if self.direct_fd is not None and offset % DIRECT_ALIGN == 0 and len(view) % DIRECT_ALIGN == 0:
            buf = self._aligned(len(view))
            buf[: len(view)] = view
            try:
                _pwrite_all(self.direct_fd, memoryview(buf)[: len(view)], offset)
                return
            except OSError as e:
                if e.errno != errno.EINVAL:
                    raise
                os.close(self.direct_fd)  # the file system took O_DIRECT at open but refuses the write
                self.direct_fd = None
        _pwrite_all(self.fd, view, offset)

    def _aligned(self, size: int) -> mmap.mmap:
        buf = getattr(self._local, "buf", None)
        if buf is None or len(buf) < size:
            buf = self._local.buf = mmap.mmap(-1, size)  # page-aligned, as O_DIRECT needs
        return buf

    def close(self) -> None:
        if self.direct_fd is not None:
            os.close(self.direct_fd)
        os.close(self.fd)


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


@dataclass(frozen=True)
class HttpPutTarget:
    """One HTTP(S) PUT of the whole disk, e.g. vCenter's
    ``https://vc/folder/<path>-flat.vmdk?dcPath=DC&dsName=DS`` with the session cookie in ``headers``.
    Knows nothing of vSphere: the caller supplies the URL and the headers.
    """

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float = 300.0
    verify_tls: bool = True

    @property
    def description(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}{parts.path}"  # no query: it may carry secrets

    def send(self, capacity: int, stream: Iterable[bytes | memoryview]) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RestoreTargetError(
                f"not an http(s) URL: {self.description}", "give the datastore /folder URL"
            )
        conn = self._connection(parts.scheme, parts.hostname, parts.port)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        sent = 0
        try:
            conn.putrequest("PUT", path)
            for name, value in {
                **self.headers,
                "Content-Length": str(capacity),
                "Content-Type": "application/octet-stream",
            }.items():
                conn.putheader(name, value)
            conn.endheaders()
            for piece in stream:
                conn.send(piece)
                sent += len(piece)
            if sent != capacity:
                raise RestoreTargetError(
                    f"sent {sent} of {capacity} bytes to {self.description}", "this is a bug in the restore"
                )
            resp = conn.getresponse()
            body = resp.read(512)
        except OSError as e:
            # a server that refuses the request (bad cookie, no such datastore) often answers and
            # hangs up before the body is sent: its answer says more than the broken pipe
            early = _early_answer(conn)
            if early is not None:
                raise _refused(self.description, *early) from e
            raise RestoreTargetError(
                f"PUT to {self.description} failed after {sent} bytes: {e}", "check the URL and the network"
            ) from e
        finally:
            conn.close()  # on any error this cuts the request short, so no complete file appears
        if resp.status not in (200, 201, 204):
            raise _refused(self.description, resp.status, resp.reason, body)

    def _connection(self, scheme: str, host: str, port: int | None) -> http.client.HTTPConnection:
        if scheme == "http":
            return http.client.HTTPConnection(host, port, timeout=self.timeout_s)
        import ssl

        context = ssl.create_default_context()
        if not self.verify_tls:  # vCenters often run with self-signed certificates
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return http.client.HTTPSConnection(host, port, timeout=self.timeout_s, context=context)


def _early_answer(conn: http.client.HTTPConnection) -> tuple[int, str, bytes] | None:
    try:
        if conn.sock is None:
            return None
        conn.sock.settimeout(2.0)
        resp = conn.getresponse()
        return resp.status, resp.reason, resp.read(512)
    except (OSError, http.client.HTTPException):
        return None


def _refused(description: str, status: int, reason: str, body: bytes) -> RestoreTargetError:
    return RestoreTargetError(
        f"PUT to {description} answered {status} {reason}: {body.decode(errors='replace').strip()[:200]}",
        "check the session cookie and the datastore path",
    )
