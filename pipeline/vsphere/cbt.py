"""Changed Block Tracking: turn it on, and ask which extents of a snapshot's disk changed.

changeIds are opaque text (``52 9a ... 3c/17``): stored and handed back, never parsed.
``QueryChangedDiskAreas`` answers one span at a time; the loop asks again from the end of each span
until the spans cover the whole disk, and refuses answers that do not add up.
"""

from __future__ import annotations

from pyVmomi import vim, vmodl

from pipeline.extents import Extent, merge
from pipeline.source.base import ChangedAreasError, ChangeIdInvalidError
from pipeline.vsphere.connection import Connection
from pipeline.vsphere.tasks import wait_for_task

ALL_ALLOCATED = "*"  # the changeId that asks for every allocated area


class CbtCoverageError(ChangedAreasError):
    """vCenter's changed-area answers leave a gap, overlap, or stop advancing."""


def enable_cbt(conn: Connection, vm_moref: str, timeout_s: float = 300.0) -> bool:
    """Turn CBT on for a VM; True when it was off. It takes effect after the next snapshot cycle."""
    vm = vim.VirtualMachine(vm_moref, conn.stub)
    if vm.config.changeTrackingEnabled:
        return False
    task = vm.ReconfigVM_Task(spec=vim.vm.ConfigSpec(changeTrackingEnabled=True))
    wait_for_task(task, f"enabling change tracking on {vm_moref}", timeout_s)
    return True


def changed_areas(
    conn: Connection,
    vm_moref: str,
    snapshot_moref: str,
    device_key: int,
    capacity: int,
    since: str,
) -> list[Extent]:
    """Extents of disk ``device_key`` in the snapshot that changed since changeId ``since``.

    ``since="*"`` gives every allocated extent. Raises ``ChangeIdInvalidError`` when vCenter does
    not know ``since`` (CBT reset, disk resized or moved): the caller then reads the disk in full.
    """
    vm = vim.VirtualMachine(vm_moref, conn.stub)
    snapshot = vim.vm.Snapshot(snapshot_moref, conn.stub)
    found: list[Extent] = []
    pos = 0
    while pos < capacity:
        try:
            info = vm.QueryChangedDiskAreas(
                snapshot=snapshot, deviceKey=device_key, startOffset=pos, changeId=since
            )
        except (vmodl.fault.InvalidArgument, vim.fault.FileFault) as exc:
            raise ChangeIdInvalidError(
                f"vCenter does not accept changeId {since!r} for disk {device_key} of {vm_moref}"
                f" ({exc.msg or type(exc).__name__})",
                "change tracking was reset; this disk is read in full once",
            ) from exc
        except vmodl.MethodFault as exc:  # not implemented, not supported, CBT off: never guess
            raise ChangedAreasError(
                f"vCenter could not answer QueryChangedDiskAreas for disk {device_key} of {vm_moref}"
                f" ({type(exc).__name__}: {exc.msg or 'no message'})",
                "this disk is read in full",
            ) from exc
        found.extend(check_span(info, pos, capacity, device_key))
        pos = min(info.startOffset + info.length, capacity)
    return merge(found)


def check_span(
    info: vim.VirtualMachine.DiskChangeInfo, pos: int, capacity: int, device_key: int
) -> list[Extent]:
    """The answer's areas, after checking that its span starts where asked and moves forward."""
    start, length = int(info.startOffset), int(info.length)
    where = f"disk {device_key} at offset {pos}"
    hint = "the backup of this disk stops rather than miss changed blocks; retry or reset CBT"
    if start > pos:
        raise CbtCoverageError(f"changed-area answer for {where} starts at {start}, leaving a gap", hint)
    if start < pos:
        raise CbtCoverageError(f"changed-area answer for {where} starts at {start}, overlapping", hint)
    if length <= 0:
        raise CbtCoverageError(f"changed-area answer for {where} covers no bytes (no progress)", hint)
    end = min(start + length, capacity)
    areas = []
    for area in info.changedArea or []:
        a = Extent(int(area.start), int(area.length))
        if a.offset < start or a.end > start + length:
            raise CbtCoverageError(
                f"changed area {a.offset}+{a.length} lies outside the answer's span"
                f" {start}+{length} ({where})",
                hint,
            )
        if a.offset < end:
            areas.append(Extent(a.offset, min(a.end, end) - a.offset))
    return areas
