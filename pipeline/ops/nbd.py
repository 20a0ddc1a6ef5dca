"""Instant access: a restore point's disks served read-only over NBD, straight from the repository.

A small NBD server of our own (fixed newstyle handshake; ``NBD_OPT_GO``, ``NBD_OPT_INFO``,
``NBD_OPT_EXPORT_NAME``, ``NBD_OPT_LIST``; ``NBD_CMD_READ``/``NBD_CMD_DISC``/``NBD_CMD_FLUSH``;
simple replies only; read-only) over ``DiskImageReader``: a read fetches only the chunks it touches,
verifies them, and keeps the last ``cache_bytes`` of chunks in an LRU. One export per disk, named by
its disk key; the empty name means the first disk. Nothing is restored first.

Why not nbdkit's python plugin: Debian's nbdkit embeds Debian's Python, not this project's.

Mounting a guest file system (as root; the export is read-only, so journals are not replayed)::

    vmpump serve --vm web-01 --point latest --port 10809 &          # or any free port
    nbdinfo --list nbd://127.0.0.1:10809                              # the disks it serves
    # kernel client
    modprobe nbd && nbd-client 127.0.0.1 10809 /dev/nbd0 -N disk0 -readonly
    mount -o ro,norecovery /dev/nbd0p1 /mnt/restore                   # xfs; ext4: -o ro,noload
    umount /mnt/restore && nbd-client -d /dev/nbd0
    # or without the kernel module (libguestfs)
    guestmount --ro --format=raw -a nbd://127.0.0.1:10809/disk0 -i /mnt/restore
    # or copy it out, or boot it: qemu-img convert -f raw -O qcow2 nbd://127.0.0.1:10809/disk0 out.qcow2
"""

from __future__ import annotations

import logging
import socket
import socketserver
import struct
import threading
from collections.abc import Mapping
from typing import Protocol

from pipeline.errors import VmpumpError
from pipeline.ops.errors import InstantAccessError
from pipeline.ops.reader import DiskImageReader
from pipeline.store.repository import Repository
from pipeline.store.restore_point import RestorePoint

log = logging.getLogger(__name__)

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1, 2
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_INFO, OPT_GO = 1, 2, 3, 6, 7
REP_ACK, REP_SERVER, REP_INFO = 1, 2, 3
REP_ERR_UNSUP, REP_ERR_INVALID, REP_ERR_UNKNOWN = 2**31 + 1, 2**31 + 3, 2**31 + 6
INFO_EXPORT = 0
# has flags | read-only | flush accepted | many connections see the same (immutable) data
TRANSMISSION_FLAGS = 1 | 2 | 4 | 256
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH = 0, 1, 2, 3
EPERM, EIO, EINVAL = 1, 5, 22
MAX_REQUEST = 32 << 20
_REQUEST = struct.Struct(">IHHQQI")


class BlockExport(Protocol):
    @property
    def capacity(self) -> int: ...

    def read(self, offset: int, length: int) -> bytes: ...


def point_exports(
    repo: Repository, point: RestorePoint, cache_bytes: int = 64 << 20
) -> dict[str, BlockExport]:
    """Every disk of ``point`` as an export named by its disk key, in the point's disk order."""
    per_disk = max(4 << 20, cache_bytes // max(1, len(point.disks)))
    return {
        d.disk_key: DiskImageReader(repo, repo.read_manifest(d.manifest_key), point.id, per_disk)
        for d in point.disks
    }


class NbdServer:
    """A threaded NBD server on ``host:port`` (port 0 picks a free one); ``with`` starts and stops it."""

    def __init__(self, exports: Mapping[str, BlockExport], host: str = "127.0.0.1", port: int = 0) -> None:
        if not exports:
            raise InstantAccessError("nothing to export", "the restore point has no disks")
        self.exports = dict(exports)
        try:
            self._server = _Server((host, port), _Handler)
        except OSError as e:
            raise InstantAccessError(
                f"cannot listen on {host}:{port}: {e.strerror}", "choose another --port"
            ) from e
        self._server.exports = self.exports  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def url(self, export: str = "") -> str:
        host, port = self.address
        return f"nbd://{host}:{port}/{export}"

    def start(self) -> NbdServer:
        self._thread = threading.Thread(target=self._server.serve_forever, name="vmpump-nbd", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until ``stop`` (from another thread) or KeyboardInterrupt."""
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> NbdServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Disconnect(Exception):
    pass


class _Handler(socketserver.BaseRequestHandler):
    request: socket.socket

    def handle(self) -> None:
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        exports: dict[str, BlockExport] = self.server.exports  # type: ignore[attr-defined]
        try:
            export = self._negotiate(exports)
            if export is not None:
                self._transmit(export)
        except (_Disconnect, ConnectionError):
            pass

    # ---- handshake and option haggling --------------------------------------------------------
    def _negotiate(self, exports: dict[str, BlockExport]) -> BlockExport | None:
        self._send(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
        (client_flags,) = struct.unpack(">I", self._recv(4))
        no_zeroes = bool(client_flags & FLAG_NO_ZEROES)
        while True:
            magic, option, length = struct.unpack(">QII", self._recv(16))
            if magic != IHAVEOPT:
                return None
            data = self._recv(length) if length else b""
            if option == OPT_EXPORT_NAME:
                export = self._find(exports, data.decode(errors="replace"))
                if export is None:
                    return None  # the protocol's only answer to an unknown name here: hang up
                self._send(
                    struct.pack(">QH", export.capacity, TRANSMISSION_FLAGS)
                    + (b"" if no_zeroes else bytes(124))
                )
                return export
            if option == OPT_ABORT:
                self._reply(option, REP_ACK)
                return None
            if option == OPT_LIST:
                for name in exports:
                    raw = name.encode()
                    self._reply(option, REP_SERVER, struct.pack(">I", len(raw)) + raw)
                self._reply(option, REP_ACK)
            elif option in (OPT_INFO, OPT_GO):
                export = self._info(option, data, exports)
                if export is not None and option == OPT_GO:
                    return export
            else:  # structured replies, meta contexts, TLS, extended headers: not offered
                self._reply(option, REP_ERR_UNSUP)

    def _info(self, option: int, data: bytes, exports: dict[str, BlockExport]) -> BlockExport | None:
        if len(data) < 6:
            self._reply(option, REP_ERR_INVALID)
            return None
        (name_len,) = struct.unpack(">I", data[:4])
        if len(data) < 4 + name_len + 2:
            self._reply(option, REP_ERR_INVALID)
            return None
        export = self._find(exports, data[4 : 4 + name_len].decode(errors="replace"))
        if export is None:
            self._reply(option, REP_ERR_UNKNOWN, b"no such export")
            return None
        self._reply(option, REP_INFO, struct.pack(">HQH", INFO_EXPORT, export.capacity, TRANSMISSION_FLAGS))
        self._reply(option, REP_ACK)
        return export

    @staticmethod
    def _find(exports: dict[str, BlockExport], name: str) -> BlockExport | None:
        return exports.get(name) if name else next(iter(exports.values()))

    def _reply(self, option: int, kind: int, data: bytes = b"") -> None:
        self._send(struct.pack(">QIII", OPT_REPLY_MAGIC, option, kind, len(data)) + data)

    # ---- transmission -------------------------------------------------------------------------
    def _transmit(self, export: BlockExport) -> None:
        while True:
            magic, _flags, command, handle, offset, length = _REQUEST.unpack(self._recv(_REQUEST.size))
            if magic != REQUEST_MAGIC:
                return
            if command == CMD_DISC:
                return
            if command == CMD_READ:
                self._read(export, handle, offset, length)
            elif command == CMD_WRITE:
                self._recv(length)  # drain the payload, then refuse: the export is read-only
                self._simple(handle, EPERM)
            elif command == CMD_FLUSH:
                self._simple(handle, 0)
            else:
                self._simple(handle, EINVAL)

    def _read(self, export: BlockExport, handle: int, offset: int, length: int) -> None:
        if length > MAX_REQUEST or offset + length > export.capacity:
            self._simple(handle, EINVAL)
            return
        try:
            data = export.read(offset, length)
        except VmpumpError as e:  # a damaged or missing chunk: the client sees EIO, the log says why
            log.error("NBD read of %d bytes at %d failed: %s", length, offset, e)
            self._simple(handle, EIO)
            return
        self._simple(handle, 0, data)

    def _simple(self, handle: int, error: int, data: bytes = b"") -> None:
        self._send(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, error, handle) + data)

    # ---- bytes on the wire --------------------------------------------------------------------
    def _send(self, data: bytes) -> None:
        self.request.sendall(data)

    def _recv(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            piece = self.request.recv(min(n - len(buf), 1 << 20))
            if not piece:
                raise _Disconnect()
            buf += piece
        return bytes(buf)
