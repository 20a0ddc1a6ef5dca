"""The inventory: frozen data in a constant number of SOAP round trips."""

from __future__ import annotations

import dataclasses

import pytest

from pipeline.vsphere.connection import connect
from pipeline.vsphere.inventory import InventoryError, VmInfo, load_inventory
from tests.fixtures.vcsim import endpoint_of

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def big_sim(vcsim_factory):
    return vcsim_factory(hosts=3, datastores=2, vms=20, disk_mb=16)


def _inventory_round_trips(sim) -> tuple[int, object]:
    with connect(endpoint_of(sim)) as conn:
        before = conn.round_trips
        inventory = load_inventory(conn)
        return conn.round_trips - before, inventory


def test_inventory_of_twenty_vms_three_hosts_two_datastores(big_sim):
    _, inv = _inventory_round_trips(big_sim)
    assert len(inv.vms) == 20
    assert [h.name for h in inv.hosts] == ["DC0_C0_H0", "DC0_C0_H1", "DC0_C0_H2"]
    assert [d.name for d in inv.datastores] == ["LocalDS_0", "LocalDS_1"]
    assert all(h.datastores == ("LocalDS_0", "LocalDS_1") for h in inv.hosts)
    ds = inv.datastore("LocalDS_0")
    assert ds.datacenter == "DC0" and ds.capacity > ds.free_space > 0 and ds.url
    vm = inv.vm("DC0_C0_RP0_VM7")
    assert isinstance(vm, VmInfo)
    assert vm.host in {h.name for h in inv.hosts}
    assert vm.datacenter == "DC0"
    assert vm.power_state == "poweredOn"
    assert vm.tools_running is False and vm.tools_running_status == "guestToolsNotRunning"
    assert vm.cbt_enabled is False
    assert vm.snapshots == ()
    (disk,) = vm.disks
    assert disk.key == 2000
    assert disk.capacity == 16 << 20
    assert disk.file_name == f"[{disk.datastore}] DC0_C0_RP0_VM7/disk1.vmdk"
    assert disk.label == "Hard disk 1"
    assert disk.change_id is None
    assert {v.disks[0].datastore for v in inv.vms} == {"LocalDS_0", "LocalDS_1"}  # spread round-robin
    with pytest.raises(dataclasses.FrozenInstanceError):
        vm.name = "other"  # type: ignore[misc]


def test_inventory_round_trips_do_not_grow_with_the_number_of_vms(big_sim, vcsim_factory):
    small = vcsim_factory(hosts=3, datastores=2, vms=5, disk_mb=16)
    small_trips, small_inv = _inventory_round_trips(small)
    big_trips, big_inv = _inventory_round_trips(big_sim)
    assert (len(small_inv.vms), len(big_inv.vms)) == (5, 20)
    assert small_trips == big_trips
    assert big_trips <= 12  # 4 object types x (create view, retrieve, destroy view)


def test_unknown_vm_name_is_a_clear_error(vcsim, vsphere_conn):
    inv = load_inventory(vsphere_conn)
    with pytest.raises(InventoryError, match="no VM named 'nope'"):
        inv.vm("nope")


def test_inventory_shows_tools_cbt_and_snapshots(vcsim, vsphere_conn):
    from pipeline.vsphere.cbt import enable_cbt
    from pipeline.vsphere.snapshots import backup_snapshot

    name = "DC0_C0_RP0_VM3"
    vm = load_inventory(vsphere_conn).vm(name)
    vcsim.set_tools_running(name, True)
    enable_cbt(vsphere_conn, vm.moref)
    with backup_snapshot(vsphere_conn, vm.moref, run_id="inv1", job="nightly") as snap:
        seen = load_inventory(vsphere_conn).vm(name)
        assert seen.tools_running and seen.tools_version_status == "guestToolsCurrent"
        assert seen.cbt_enabled
        assert [(s.moref, s.name) for s in seen.snapshots] == [(snap.moref, "vmpump-inv1")]
        assert seen.snapshots[0].description.startswith("vmpump:nightly:inv1:")
    vcsim.set_tools_running(name, False)
    assert load_inventory(vsphere_conn).vm(name).snapshots == ()


def test_inventory_follows_property_collector_paging_tokens(big_sim):
    _, one_page = _inventory_round_trips(big_sim)
    big_sim.set_retrieve_page(3)
    try:
        trips, paged = _inventory_round_trips(big_sim)
    finally:
        big_sim.set_retrieve_page(None)
    assert paged == one_page
    assert trips == 12 + 6  # 20 VMs in pages of 3: six ContinueRetrievePropertiesEx calls


def test_vms_with_several_disks_list_each_with_its_own_key_and_datastore(vcsim_factory):
    sim = vcsim_factory(hosts=1, datastores=2, vms=2, disks_per_vm=3, disk_mb=8)
    _, inv = _inventory_round_trips(sim)
    for vm in inv.vms:
        assert [d.key for d in vm.disks] == [2000, 2001, 2002]
        assert [d.label for d in vm.disks] == ["Hard disk 1", "Hard disk 2", "Hard disk 3"]
        assert [d.file_name.split("] ")[1] for d in vm.disks] == [
            f"{vm.name}/disk{i}.vmdk" for i in (1, 2, 3)
        ]
        assert len({d.datastore for d in vm.disks}) == 2
    assert sim.disk(inv.vms[0].name, 2).flat_path.stat().st_size == 8 << 20
