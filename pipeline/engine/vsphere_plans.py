"""Plans for vSphere VMs: inventory once, then per VM, just before its disks run: make sure CBT
is on, take the (quiesced) snapshot, hand each disk to a worker, and remove the snapshot as soon
as the disks are read, whatever happened.

Workers log in to vCenter themselves with the job's endpoint (a pyvmomi connection cannot be
pickled); they ask CBT for the changed areas of their disk and read it through the configured
transport, so only plain data (the snapshot disk's names and keys) travels from the driver.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial

from pipeline.config import JobConfig, VCenterConfig
from pipeline.engine.backup import PreparedVm, VmPlan, previous_points
from pipeline.engine.disk_task import DiskJob
from pipeline.source.vsphere import SnapshotDisk, TransportOptions, open_vsphere_source, snapshot_disks
from pipeline.store.repository import Repository
from pipeline.vsphere.cbt import enable_cbt
from pipeline.vsphere.connection import Connection, VsphereEndpoint, connect
from pipeline.vsphere.inventory import VmInfo, load_inventory
from pipeline.vsphere.snapshots import backup_snapshot, hunt_orphans

log = logging.getLogger(__name__)

ORPHAN_AGE = timedelta(hours=6)  # older vmpump snapshots belong to no running job: remove them


def endpoint_of(vc: VCenterConfig) -> VsphereEndpoint:
    return VsphereEndpoint(
        host=vc.host,
        user=vc.user,
        password=vc.password(),
        port=vc.port,
        protocol=vc.protocol,
        insecure=vc.insecure,
    )


@dataclass(frozen=True)
class VsphereDiskSpec:
    """Opens one snapshot disk inside the worker: its own vCenter session, CBT and transport."""

    endpoint: VsphereEndpoint
    disk: SnapshotDisk
    transport: str
    options: TransportOptions = field(default_factory=TransportOptions)

    def open(self):  # noqa: ANN201 - a DiskSource that closes its own session
        conn = connect(self.endpoint)
        try:
            return _SessionSource(conn, open_vsphere_source(conn, self.disk, self.transport, self.options))
        except BaseException:
            conn.close()
            raise


class _SessionSource:
    """A vSphere disk source that logs its session out when it is closed."""

    def __init__(self, conn: Connection, source) -> None:  # noqa: ANN001 - VSphereDiskSource
        self._conn, self._source = conn, source
        self.capacity, self.change_id = source.capacity, source.change_id
        self.changed_extents, self.read = source.changed_extents, source.read

    def close(self) -> None:
        try:
            self._source.close()
        finally:
            self._conn.close()


@contextmanager
def vsphere_plans(cfg: JobConfig, repo: Repository, run_id: str) -> Iterator[list[VmPlan]]:
    """The job's VM plans; the driver's vCenter session lives until the block ends."""
    assert cfg.vcenter is not None
    endpoint = endpoint_of(cfg.vcenter)
    with connect(endpoint) as conn:
        for orphan in hunt_orphans(conn, older_than=ORPHAN_AGE):
            log.warning("removed orphaned snapshot %s of %s", orphan.snapshot.name, orphan.vm_name)
        inventory = load_inventory(conn)
        previous = previous_points(repo)
        plans = []
        for vm in inventory.vms:
            if cfg.vcenter.datacenter and vm.datacenter != cfg.vcenter.datacenter:
                continue
            if not cfg.selection.matches(vm.name) or not vm.disks:
                continue
            vm_id = f"{cfg.vcenter.host}/{vm.moref}"
            prev = previous.get(vm_id)
            plans.append(
                VmPlan(
                    name=vm.name,
                    vm_id=vm_id,
                    disks=tuple(d.label for d in vm.disks),
                    capacity=sum(d.capacity for d in vm.disks),
                    incremental=prev is not None,
                    prepare=partial(_prepare_vm, conn, endpoint, cfg, vm, vm_id, prev, run_id),
                    source_kind="vsphere",
                )
            )
        yield plans


@contextmanager
def _prepare_vm(
    conn: Connection,
    endpoint: VsphereEndpoint,
    cfg: JobConfig,
    vm: VmInfo,
    vm_id: str,
    previous,  # noqa: ANN001 - RestorePoint | None
    run_id: str,
) -> Iterator[PreparedVm]:
    if not vm.cbt_enabled and enable_cbt(conn, vm.moref):
        # CBT starts tracking at the next snapshot: this one; this backup reads the disks in full
        log.info("enabled changed block tracking on %s", vm.name)
    options = TransportOptions(datastore_mounts={k: str(v) for k, v in cfg.backup.datastore_paths.items()})
    prev_disks = {r.disk_key: r for r in previous.disks} if previous else {}
    labels = {d.key: d.label for d in vm.disks}
    with backup_snapshot(conn, vm.moref, run_id, cfg.name, quiesce=cfg.backup.quiesce) as snap:
        jobs = []
        for disk in snapshot_disks(snap, vm.datacenter):
            key = str(disk.device_key)
            old = prev_disks.get(key)
            usable = old is not None and old.change_id and disk.change_id and old.capacity == disk.capacity
            jobs.append(
                DiskJob(
                    vm_name=vm.name,
                    vm_id=vm_id,
                    disk_key=key,
                    label=labels.get(disk.device_key, key),
                    source=VsphereDiskSpec(endpoint, disk, cfg.backup.transport, options),
                    since=old.change_id if usable else None,
                    previous_manifest=old.manifest_key if usable else None,
                    full_read_reason=_full_reason(old, disk) if old is not None and not usable else None,
                    guard_share=cfg.backup.cbt_guard_share,
                )
            )
        yield PreparedVm(tuple(jobs), snap.consistency)


def _full_reason(old, disk: SnapshotDisk) -> str:  # noqa: ANN001 - DiskRecord
    if old.capacity != disk.capacity:
        return f"disk resized from {old.capacity} to {disk.capacity} bytes; read in full"
    return "no change marker from the previous restore point (CBT was off or reset); read in full"
