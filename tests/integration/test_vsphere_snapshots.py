"""Backup snapshots: quiesce policy, removal in every outcome, and the orphan hunter."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from pyVmomi import vim

from pipeline.source.vsphere import open_vsphere_source, snapshot_disks
from pipeline.vsphere.inventory import load_inventory
from pipeline.vsphere.snapshots import (
    SnapshotError,
    backup_snapshot,
    create_backup_snapshot,
    hunt_orphans,
    vm_snapshots,
)
from pipeline.vsphere.tasks import wait_for_task

pytestmark = pytest.mark.integration


@pytest.fixture
def vm(vcsim, vsphere_conn):
    info = load_inventory(vsphere_conn).vm("DC0_C0_RP0_VM0")
    yield info
    vcsim.set_tools_running(info.name, False)
    vcsim.set_quiesce_fails(info.name, False)
    assert vm_snapshots(vsphere_conn, info.moref) == [], "a test left a snapshot behind"


def test_quiesced_snapshot_when_tools_run_on_linux_is_filesystem_consistent(vcsim, vsphere_conn, vm):
    vcsim.set_tools_running(vm.name, True, guest_family="linuxGuest")
    with backup_snapshot(vsphere_conn, vm.moref, run_id="q1", job="nightly", quiesce="require") as snap:
        assert snap.consistency == "filesystem"
        (tree,) = vm_snapshots(vsphere_conn, vm.moref)
        assert tree.quiesced and tree.name == "vmpump-q1"


def test_quiesced_snapshot_on_windows_is_application_consistent(vcsim, vsphere_conn, vm):
    vcsim.set_tools_running(vm.name, True, guest_family="windowsGuest")
    with backup_snapshot(vsphere_conn, vm.moref, run_id="q2", job="nightly", quiesce="prefer") as snap:
        assert snap.consistency == "application"


def test_prefer_falls_back_to_crash_consistent_without_tools(vcsim, vsphere_conn, vm):
    with backup_snapshot(vsphere_conn, vm.moref, run_id="q3", job="nightly", quiesce="prefer") as snap:
        assert snap.consistency == "crash"
        (tree,) = vm_snapshots(vsphere_conn, vm.moref)
        assert not tree.quiesced


def test_prefer_falls_back_to_crash_consistent_when_quiescing_fails(vcsim, vsphere_conn, vm):
    vcsim.set_tools_running(vm.name, True)
    vcsim.set_quiesce_fails(vm.name, True)
    with backup_snapshot(vsphere_conn, vm.moref, run_id="q4", job="nightly", quiesce="prefer") as snap:
        assert snap.consistency == "crash"


def test_require_without_tools_fails_clearly_and_takes_no_snapshot(vcsim, vsphere_conn, vm):
    with pytest.raises(SnapshotError) as err:
        create_backup_snapshot(vsphere_conn, vm.moref, run_id="q5", job="nightly", quiesce="require")
    assert err.value.cause == f"VM {vm.name} needs a quiesced snapshot but VMware Tools are not running"
    assert "quiesce: prefer" in err.value.hint


def test_require_when_quiescing_fails_is_a_clear_error(vcsim, vsphere_conn, vm):
    vcsim.set_tools_running(vm.name, True)
    vcsim.set_quiesce_fails(vm.name, True)
    with pytest.raises(SnapshotError, match=f"quiesced snapshot of VM {vm.name} failed"):
        create_backup_snapshot(vsphere_conn, vm.moref, run_id="q6", job="nightly", quiesce="require")


@pytest.mark.parametrize("failure", [RuntimeError("disk read exploded"), KeyboardInterrupt()])
def test_snapshot_is_removed_when_a_read_fails_midway(vcsim, vsphere_conn, vm, failure):
    vcsim.write_disk(vm.name, 0, 0, b"boot" * 1024)
    with pytest.raises(type(failure)):
        with backup_snapshot(vsphere_conn, vm.moref, run_id="midread", job="nightly") as snap:
            (disk,) = snapshot_disks(snap, vm.datacenter)
            source = open_vsphere_source(vsphere_conn, disk)
            try:
                assert source.read(0, 4096) == b"boot" * 1024
                assert len(vm_snapshots(vsphere_conn, vm.moref)) == 1
                raise failure
            finally:
                source.close()
    assert vm_snapshots(vsphere_conn, vm.moref) == []


def test_hunter_removes_orphans_and_dry_run_only_reports(vcsim, vsphere_conn, vm):
    orphan = create_backup_snapshot(vsphere_conn, vm.moref, run_id="crashed", job="nightly")
    manual = wait_for_task(
        vim.VirtualMachine(vm.moref, vsphere_conn.stub).CreateSnapshot_Task(
            name="before-upgrade", description="admin's", memory=False, quiesce=False
        ),
        "manual snapshot",
    )
    future = datetime.now(timezone.utc) + timedelta(hours=2)

    assert hunt_orphans(vsphere_conn, older_than=timedelta(hours=1)) == []  # too young to be an orphan

    found = hunt_orphans(vsphere_conn, older_than=timedelta(hours=1), dry_run=True, now=future)
    assert [(o.vm_name, o.snapshot.moref, o.removed) for o in found] == [(vm.name, orphan.moref, False)]
    assert len(vm_snapshots(vsphere_conn, vm.moref)) == 2

    removed = hunt_orphans(vsphere_conn, older_than=timedelta(hours=1), now=future)
    assert [(o.snapshot.name, o.removed) for o in removed] == [("vmpump-crashed", True)]
    assert [s.name for s in vm_snapshots(vsphere_conn, vm.moref)] == ["before-upgrade"]

    wait_for_task(
        vim.vm.Snapshot(manual._moId, vsphere_conn.stub).RemoveSnapshot_Task(removeChildren=False), "rm"
    )
