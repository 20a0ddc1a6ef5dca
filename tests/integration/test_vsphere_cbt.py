"""Changed Block Tracking through real SOAP: enable, page to full coverage, refuse bad answers."""

from __future__ import annotations

import random

import pytest
from pyVmomi import vim

from pipeline.extents import Extent, merge
from pipeline.source import ChangeIdInvalidError
from pipeline.source.vsphere import open_vsphere_source, snapshot_disks
from pipeline.vsphere.cbt import CbtCoverageError, changed_areas, enable_cbt
from pipeline.vsphere.inventory import load_inventory
from pipeline.vsphere.snapshots import backup_snapshot, create_backup_snapshot, remove_snapshot

pytestmark = pytest.mark.integration

MiB = 1 << 20
PAGE = 4 * MiB  # the fixture's -cbt-page-bytes


def _scattered_writes(seed: int, count: int, capacity: int) -> list[tuple[int, bytes]]:
    rng = random.Random(seed)
    stride = capacity // count
    writes = []
    for i in range(count):
        offset = i * stride + rng.randrange(0, stride // 2, 512)
        writes.append((offset, rng.randbytes(rng.choice([512, 4096, 8192]))))
    # one write straddles a page boundary, so clipping to answer spans is exercised
    writes.append((3 * PAGE - 4096, rng.randbytes(8192)))
    return writes


def _extents(writes: list[tuple[int, bytes]]) -> list[Extent]:
    return merge(Extent(o, len(d)) for o, d in writes)


@pytest.fixture(scope="module")
def cbt_vm(vcsim, vsphere_conn):
    vm = load_inventory(vsphere_conn).vm("DC0_C0_RP0_VM1")
    assert enable_cbt(vsphere_conn, vm.moref) is True
    return vm


def test_enable_cbt_turns_it_on_once(vcsim, vsphere_conn, cbt_vm):
    assert load_inventory(vsphere_conn).vm(cbt_vm.name).cbt_enabled
    assert enable_cbt(vsphere_conn, cbt_vm.moref) is False


def test_changed_areas_page_to_full_coverage_with_exact_extents(vcsim, vsphere_conn, cbt_vm):
    disk = cbt_vm.disks[0]
    writes = _scattered_writes(seed=1, count=400, capacity=disk.capacity)
    vcsim.write_disk_many(cbt_vm.name, 0, writes)
    with backup_snapshot(vsphere_conn, cbt_vm.moref, run_id="page", job="t") as snap:
        before = vsphere_conn.round_trips
        got = changed_areas(vsphere_conn, cbt_vm.moref, snap.moref, disk.key, disk.capacity, "*")
        pages = vsphere_conn.round_trips - before
    assert len(got) > 300
    assert got == _extents(writes)
    assert pages == disk.capacity // PAGE


def test_incremental_reports_exactly_the_writes_since_the_previous_snapshot(vcsim, vsphere_conn, cbt_vm):
    disk = cbt_vm.disks[0]
    first = create_backup_snapshot(vsphere_conn, cbt_vm.moref, run_id="inc1", job="t")
    try:
        (first_disk,) = first.disks
        assert first_disk.change_id  # opaque text, never parsed
        later = _scattered_writes(seed=2, count=50, capacity=disk.capacity)
        vcsim.write_disk_many(cbt_vm.name, 0, later)
        with backup_snapshot(vsphere_conn, cbt_vm.moref, run_id="inc2", job="t") as second:
            (second_disk,) = second.disks
            assert second_disk.change_id != first_disk.change_id
            got = changed_areas(
                vsphere_conn, cbt_vm.moref, second.moref, disk.key, disk.capacity, first_disk.change_id
            )
            assert got == _extents(later)
            # the older snapshot's changeId did not move when the newer one was taken
            again = vim.vm.Snapshot(first.moref, vsphere_conn.stub)
            (old,) = [d for d in again.config.hardware.device if d.key == disk.key]
            assert old.backing.changeId == first_disk.change_id
    finally:
        remove_snapshot(vsphere_conn, cbt_vm.moref, first.moref)


@pytest.mark.parametrize("lie", ["gap", "overlap", "stall", "outside"])
def test_coverage_check_refuses_answers_that_do_not_add_up(vcsim, vsphere_conn, cbt_vm, lie):
    disk = cbt_vm.disks[0]
    with backup_snapshot(vsphere_conn, cbt_vm.moref, run_id=f"lie-{lie}", job="t") as snap:
        vcsim.make_cbt_lie(lie)
        try:
            with pytest.raises(CbtCoverageError):
                changed_areas(vsphere_conn, cbt_vm.moref, snap.moref, disk.key, disk.capacity, "*")
        finally:
            vcsim.make_cbt_lie(None)


def test_unknown_change_id_raises_change_id_invalid(vcsim, vsphere_conn, cbt_vm):
    disk = cbt_vm.disks[0]
    with backup_snapshot(vsphere_conn, cbt_vm.moref, run_id="badid", job="t") as snap:
        with pytest.raises(ChangeIdInvalidError, match="does not accept changeId"):
            changed_areas(vsphere_conn, cbt_vm.moref, snap.moref, disk.key, disk.capacity, "52 00 ff/99")


def test_a_cbt_reset_invalidates_earlier_change_ids(vcsim, vsphere_conn, cbt_vm):
    with backup_snapshot(vsphere_conn, cbt_vm.moref, run_id="r1", job="t") as first:
        old_id = first.disks[0].change_id
    vcsim.reset_cbt(cbt_vm.name, 0)
    with backup_snapshot(vsphere_conn, cbt_vm.moref, run_id="r2", job="t") as snap:
        (sd,) = snapshot_disks(snap, cbt_vm.datacenter)
        source = open_vsphere_source(vsphere_conn, sd)
        try:
            with pytest.raises(ChangeIdInvalidError):
                source.changed_extents(old_id)
            assert source.change_id == sd.change_id
        finally:
            source.close()


def test_disk_without_cbt_reads_in_full(vcsim, vsphere_conn):
    vm = load_inventory(vsphere_conn).vm("DC0_C0_RP0_VM2")
    assert not vm.cbt_enabled
    with backup_snapshot(vsphere_conn, vm.moref, run_id="nocbt", job="t") as snap:
        (sd,) = snapshot_disks(snap, vm.datacenter)
        assert sd.change_id is None
        source = open_vsphere_source(vsphere_conn, sd)
        try:
            assert source.changed_extents(None) == [Extent(0, sd.capacity)]
        finally:
            source.close()


def test_each_disk_of_a_vm_has_its_own_change_log(vcsim_factory):
    from pipeline.vsphere.connection import connect
    from tests.fixtures.vcsim import endpoint_of

    sim = vcsim_factory(hosts=1, datastores=2, vms=1, disks_per_vm=2, disk_mb=8, cbt_page_bytes=MiB)
    with connect(endpoint_of(sim)) as conn:
        vm = load_inventory(conn).vm(sim.vm_names()[0])
        enable_cbt(conn, vm.moref)
        sim.write_disk(vm.name, 0, 0, b"a" * 4096)
        sim.write_disk(vm.name, 1, 5 * MiB, b"b" * 8192)
        with backup_snapshot(conn, vm.moref, run_id="two", job="t") as snap:
            first, second = snapshot_disks(snap, vm.datacenter)
            assert (first.device_key, second.device_key) == (2000, 2001)
            assert first.datastore != second.datastore
            got = [
                changed_areas(conn, vm.moref, snap.moref, d.device_key, d.capacity, "*")
                for d in (first, second)
            ]
            assert got == [[Extent(0, 4096)], [Extent(5 * MiB, 8192)]]
            source = open_vsphere_source(conn, second)
            try:
                assert source.read(5 * MiB, 8192) == b"b" * 8192
            finally:
                source.close()
