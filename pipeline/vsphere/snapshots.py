"""Backup snapshots: create (quiesced when possible), always remove, and hunt orphans.

Every snapshot vmpump takes is named ``vmpump-<run id>`` and described ``vmpump:<job>:<run>:<UTC
time>``, so ``hunt_orphans`` can find the ones a crashed run left behind without touching anybody
else's snapshots.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

from pyVmomi import vim

from pipeline.vsphere.connection import Connection, VsphereError
from pipeline.vsphere.inventory import DiskInfo, SnapshotInfo, disks_of, retrieve, snapshot_list
from pipeline.vsphere.tasks import TaskFailedError, wait_for_task

log = logging.getLogger(__name__)

QuiescePolicy = Literal["require", "prefer", "off"]
Consistency = Literal["application", "filesystem", "crash"]
NAME_PREFIX = "vmpump-"
DESCRIPTION_PREFIX = "vmpump:"


class SnapshotError(VsphereError):
    """A backup snapshot could not be taken or removed."""


@dataclass(frozen=True)
class BackupSnapshot:
    vm_moref: str
    vm_name: str
    moref: str
    name: str
    consistency: Consistency
    disks: tuple[DiskInfo, ...]  # as frozen in the snapshot, with their changeIds


@dataclass(frozen=True)
class OrphanSnapshot:
    vm_moref: str
    vm_name: str
    snapshot: SnapshotInfo
    removed: bool


def snapshot_name(run_id: str) -> str:
    return f"{NAME_PREFIX}{run_id}"


def snapshot_description(job: str, run_id: str, now: datetime | None = None) -> str:
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{DESCRIPTION_PREFIX}{job}:{run_id}:{stamp}"


def create_backup_snapshot(
    conn: Connection,
    vm_moref: str,
    run_id: str,
    job: str,
    quiesce: QuiescePolicy = "prefer",
    timeout_s: float = 1800.0,
) -> BackupSnapshot:
    """A snapshot without memory, quiesced as the policy asks; its consistency says what was got."""
    if quiesce not in ("require", "prefer", "off"):
        raise SnapshotError(f"unknown quiesce policy {quiesce!r}", "use require, prefer or off")
    vm = vim.VirtualMachine(vm_moref, conn.stub)
    vm_name = vm.name
    name = snapshot_name(run_id)
    description = snapshot_description(job, run_id)
    tools_running = quiesce != "off" and vm.guest.toolsRunningStatus == "guestToolsRunning"
    if quiesce == "require" and not tools_running:
        raise SnapshotError(
            f"VM {vm_name} needs a quiesced snapshot but VMware Tools are not running",
            "start VMware Tools in the guest, or set quiesce: prefer to accept a crash-consistent snapshot",
        )
    if tools_running:
        try:
            ref = _take(conn, vm, name, description, quiesced=True, timeout_s=timeout_s)
            family = vm.guest.guestFamily or ""
            consistency: Consistency = "application" if family == "windowsGuest" else "filesystem"
            return _describe(conn, vm_moref, vm_name, ref, name, consistency)
        except (TaskFailedError, vim.fault.ApplicationQuiesceFault, vim.fault.ToolsUnavailable) as exc:
            if quiesce == "require":
                raise SnapshotError(
                    f"quiesced snapshot of VM {vm_name} failed: {_message(exc)}",
                    "check VMware Tools and VSS/freeze scripts in the guest, or set quiesce: prefer",
                ) from exc
            log.warning(
                "quiescing %s failed (%s); taking a crash-consistent snapshot", vm_name, _message(exc)
            )
    elif quiesce == "prefer":
        log.warning("VMware Tools not running in %s; taking a crash-consistent snapshot", vm_name)
    ref = _take(conn, vm, name, description, quiesced=False, timeout_s=timeout_s)
    return _describe(conn, vm_moref, vm_name, ref, name, "crash")


def remove_snapshot(conn: Connection, vm_moref: str, snapshot_moref: str, timeout_s: float = 1800.0) -> None:
    """Remove one snapshot (consolidating its delta) and confirm it is gone."""
    snapshot = vim.vm.Snapshot(snapshot_moref, conn.stub)
    task = snapshot.RemoveSnapshot_Task(removeChildren=False, consolidate=True)

    def gone() -> bool:
        return snapshot_moref not in {s.moref for s in vm_snapshots(conn, vm_moref)}

    wait_for_task(task, f"removing snapshot {snapshot_moref}", timeout_s, confirm=gone)


@contextmanager
def backup_snapshot(
    conn: Connection,
    vm_moref: str,
    run_id: str,
    job: str,
    quiesce: QuiescePolicy = "prefer",
    timeout_s: float = 1800.0,
) -> Iterator[BackupSnapshot]:
    """A backup snapshot that is removed however the body ends (success, error, Ctrl-C)."""
    snap = create_backup_snapshot(conn, vm_moref, run_id, job, quiesce, timeout_s)
    body_failed = False
    try:
        yield snap
    except BaseException:
        body_failed = True
        raise
    finally:
        try:
            remove_snapshot(conn, vm_moref, snap.moref, timeout_s)
        except Exception as exc:
            why = getattr(exc, "cause", None) or exc  # our errors: the cause alone, the hint is below
            if not body_failed:
                raise SnapshotError(
                    f"snapshot {snap.name} of VM {snap.vm_name} could not be removed: {why}",
                    "remove it in the vSphere client, or run `vmpump snapshots hunt` once vCenter answers",
                ) from exc
            log.error(
                "snapshot %s of %s left behind: %s (`vmpump snapshots hunt` removes it)",
                snap.name, snap.vm_name, why,
            )  # fmt: skip


def vm_snapshots(conn: Connection, vm_moref: str) -> list[SnapshotInfo]:
    return list(snapshot_list(vim.VirtualMachine(vm_moref, conn.stub).snapshot))


def hunt_orphans(
    conn: Connection,
    older_than: timedelta = timedelta(hours=24),
    dry_run: bool = False,
    now: datetime | None = None,
) -> list[OrphanSnapshot]:
    """Find (and unless ``dry_run`` remove) vmpump snapshots older than ``older_than``."""
    cutoff = (now or datetime.now(timezone.utc)) - older_than
    found = []
    for vm, props in retrieve(conn, vim.VirtualMachine, ["name", "snapshot"]):
        for snap in snapshot_list(props.get("snapshot")):
            if not (snap.name.startswith(NAME_PREFIX) and snap.description.startswith(DESCRIPTION_PREFIX)):
                continue
            created = snap.create_time
            if created is not None and created.tzinfo is None:
                created = created.replace(tzinfo=timezone.utc)
            if created is not None and created > cutoff:
                continue
            removed = False
            if not dry_run:
                remove_snapshot(conn, vm._moId, snap.moref)
                removed = True
                log.warning("removed orphaned snapshot %s of VM %s", snap.name, props["name"])
            found.append(OrphanSnapshot(vm._moId, props["name"], snap, removed))
    return found


def _take(
    conn: Connection, vm: vim.VirtualMachine, name: str, description: str, quiesced: bool, timeout_s: float
) -> str:
    task = vm.CreateSnapshot_Task(name=name, description=description, memory=False, quiesce=quiesced)
    try:
        ref = wait_for_task(task, f"snapshot of {vm._moId}", timeout_s)
    except BaseException:
        # Interrupted or failed while vCenter may still finish it: remove what has our name.
        _remove_by_name(conn, vm._moId, name)
        raise
    return ref._moId


def _remove_by_name(conn: Connection, vm_moref: str, name: str) -> None:
    try:
        for snap in vm_snapshots(conn, vm_moref):
            if snap.name == name:
                remove_snapshot(conn, vm_moref, snap.moref)
    except Exception as exc:  # noqa: BLE001 - best effort; the hunter is the safety net
        log.error("could not clean up snapshot %s of %s: %s", name, vm_moref, exc)


def _describe(
    conn: Connection, vm_moref: str, vm_name: str, ref: str, name: str, consistency: Consistency
) -> BackupSnapshot:
    snapshot = vim.vm.Snapshot(ref, conn.stub)
    try:
        disks = tuple(disks_of(snapshot.config.hardware.device, {}))
    except BaseException:
        remove_snapshot(conn, vm_moref, ref)
        raise
    return BackupSnapshot(vm_moref, vm_name, ref, name, consistency, disks)


def _message(exc: BaseException) -> str:
    return getattr(exc, "msg", None) or getattr(exc, "cause", None) or str(exc) or type(exc).__name__
