"""One disk of one vSphere snapshot as a ``DiskSource``: CBT for extents, a transport for bytes.

Transports are chosen by name (``http``, ``file``, ``nbd``) from ``TRANSPORTS``; each reads the
*base flat file* the snapshot froze (``dir/disk-flat.vmdk`` for ``[ds] dir/disk.vmdk``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pipeline.extents import Extent
from pipeline.source.base import ChangeIdInvalidError, SourceError
from pipeline.source.file import FileTransport, mounted_path
from pipeline.source.http import HttpRangeTransport, folder_url
from pipeline.vsphere.cbt import ALL_ALLOCATED, changed_areas
from pipeline.vsphere.connection import Connection
from pipeline.vsphere.snapshots import BackupSnapshot

log = logging.getLogger(__name__)


class Transport(Protocol):
    def read(self, offset: int, length: int) -> bytes: ...

    def size(self) -> int: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class SnapshotDisk:
    """Plain data naming one disk of one snapshot; travels to the worker that reads it."""

    vm_moref: str
    snapshot_moref: str
    device_key: int
    capacity: int
    file_name: str  # "[ds] dir/disk.vmdk" as the snapshot references it
    datacenter: str
    change_id: str | None
    parent_file: str | None = None  # set when the frozen state is a delta disk on older snapshots

    @property
    def datastore(self) -> str:
        return split_datastore_path(self.file_name)[0]

    @property
    def flat_path(self) -> str:
        """The flat extent's path inside the datastore: ``dir/disk-flat.vmdk``."""
        path = split_datastore_path(self.file_name)[1]
        stem = path[: -len(".vmdk")] if path.endswith(".vmdk") else path
        return f"{stem}-flat.vmdk"


def snapshot_disks(snapshot: BackupSnapshot, datacenter: str) -> list[SnapshotDisk]:
    return [
        SnapshotDisk(
            snapshot.vm_moref,
            snapshot.moref,
            d.key,
            d.capacity,
            d.file_name,
            datacenter,
            d.change_id,
            d.parent_file,
        )
        for d in snapshot.disks
    ]


def split_datastore_path(file_name: str) -> tuple[str, str]:
    if not (file_name.startswith("[") and "]" in file_name):
        raise SourceError(
            f"disk file {file_name!r} is not a datastore path", "expected '[datastore] dir/x.vmdk'"
        )
    close = file_name.index("]")
    return file_name[1:close], file_name[close + 1 :].strip()


@dataclass(frozen=True)
class TransportOptions:
    datastore_mounts: Mapping[str, str] = field(default_factory=dict)  # file transport: name → path
    http_pool_size: int = 8
    http_retries: int = 5


def _http(conn: Connection, disk: SnapshotDisk, options: TransportOptions) -> Transport:
    url = folder_url(conn.base_url, disk.datacenter, disk.datastore, disk.flat_path)
    return HttpRangeTransport(
        url,
        session_cookie=lambda: conn.session_cookie,
        ssl_context=conn.ssl_context(),
        on_unauthorized=conn.relogin,
        pool_size=options.http_pool_size,
        retries=options.http_retries,
    )


def _file(conn: Connection, disk: SnapshotDisk, options: TransportOptions) -> Transport:
    return FileTransport(mounted_path(options.datastore_mounts, disk.datastore, disk.flat_path))


def _nbd(conn: Connection, disk: SnapshotDisk, options: TransportOptions) -> Transport:
    raise SourceError(
        "the nbd transport (nbdkit's vddk plugin) is not built yet", "use transport http or file"
    )


TRANSPORTS: dict[str, Callable[[Connection, SnapshotDisk, TransportOptions], Transport]] = {
    "http": _http,
    "file": _file,
    "nbd": _nbd,
}


class VSphereDiskSource:
    """``DiskSource`` for one snapshot disk; ``change_id`` is the snapshot disk's changeId."""

    def __init__(self, conn: Connection, disk: SnapshotDisk, transport: Transport) -> None:
        self._conn = conn
        self.disk = disk
        self._transport = transport
        # A datastore's flat file is as long as the disk; a simulator's may be shorter. Its end
        # is then where the written data ends: what lies beyond reads as zeros, like a new disk.
        self._file_size = transport.size()
        if self._file_size < disk.capacity:
            log.warning(
                "flat file of %s holds %d of the disk's %d bytes; the rest reads as zeros",
                disk.file_name, self._file_size, disk.capacity,
            )  # fmt: skip

    @property
    def capacity(self) -> int:
        return self.disk.capacity

    @property
    def change_id(self) -> str | None:
        return self.disk.change_id

    def changed_extents(self, since: str | None) -> list[Extent]:
        d = self.disk
        if since is None:
            try:
                return changed_areas(
                    self._conn, d.vm_moref, d.snapshot_moref, d.device_key, d.capacity, ALL_ALLOCATED
                )
            except ChangeIdInvalidError:
                return [Extent(0, d.capacity)]  # no CBT on this disk: everything may hold data
        return changed_areas(self._conn, d.vm_moref, d.snapshot_moref, d.device_key, d.capacity, since)

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.disk.capacity:
            raise SourceError(
                f"read {offset}+{length} beyond disk {self.disk.file_name} ({self.capacity} bytes)"
            )
        stored = max(0, min(length, self._file_size - offset))
        if stored == length:
            return self._transport.read(offset, length)
        head = self._transport.read(offset, stored) if stored else b""
        return head + bytes(length - stored)

    def close(self) -> None:
        self._transport.close()


def open_vsphere_source(
    conn: Connection,
    disk: SnapshotDisk,
    transport: str = "http",
    options: TransportOptions | None = None,
) -> VSphereDiskSource:
    if transport not in TRANSPORTS:
        raise SourceError(f"unknown transport {transport!r}", f"use one of {', '.join(sorted(TRANSPORTS))}")
    if disk.parent_file is not None and transport in ("http", "file"):
        # The frozen state is the delta file plus its parents; the flat file alone would be an
        # older state of the disk. Never read it as if it were this one.
        raise SourceError(
            f"disk {disk.file_name} is a delta on {disk.parent_file}: the VM had snapshots before "
            "this backup's, and the http and file transports read flat disks only",
            "delete or consolidate the VM's older snapshots, then rerun",
        )
    return VSphereDiskSource(conn, disk, TRANSPORTS[transport](conn, disk, options or TransportOptions()))


def local_flat_path(mounts: Mapping[str, str | Path], disk: SnapshotDisk) -> Path:
    return mounted_path(mounts, disk.datastore, disk.flat_path)
