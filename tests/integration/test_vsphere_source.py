"""Reading a snapshot's disk: datastore HTTP and direct-file transports give the flat file's bytes."""

from __future__ import annotations

import random
import urllib.error
import urllib.request

import pytest

from pipeline.source import DiskSource, SourceError
from pipeline.source.vsphere import TransportOptions, open_vsphere_source, snapshot_disks
from pipeline.vsphere.cbt import enable_cbt
from pipeline.vsphere.connection import connect
from pipeline.vsphere.inventory import load_inventory
from pipeline.vsphere.snapshots import backup_snapshot
from tests.fixtures.vcsim import endpoint_of

pytestmark = pytest.mark.integration
MiB = 1 << 20


@pytest.fixture(scope="module")
def written_vm(vcsim, vsphere_conn):
    """A VM whose disk holds random data in places, zeros and holes elsewhere."""
    vm = load_inventory(vsphere_conn).vm("DC0_C0_RP0_VM3")
    enable_cbt(vsphere_conn, vm.moref)
    rng = random.Random(7)
    writes = [
        (o * MiB + rng.randrange(0, MiB, 512), rng.randbytes(rng.randrange(512, 3 * MiB)))
        for o in range(0, 60, 6)
    ]
    vcsim.write_disk_many(vm.name, 0, writes)
    return vm


@pytest.fixture(scope="module")
def snapshot(vsphere_conn, written_vm):
    with backup_snapshot(vsphere_conn, written_vm.moref, run_id="read", job="t") as snap:
        yield snap


@pytest.mark.parametrize("transport", ["http", "file"])
def test_range_reads_are_byte_identical_to_the_flat_file(
    vcsim, vsphere_conn, written_vm, snapshot, transport
):
    (disk,) = snapshot_disks(snapshot, written_vm.datacenter)
    flat = vcsim.disk(written_vm.name).flat_path.read_bytes()
    options = TransportOptions(datastore_mounts={n: str(p) for n, p in vcsim.datastore_dirs.items()})
    source = open_vsphere_source(vsphere_conn, disk, transport=transport, options=options)
    try:
        assert isinstance(source, DiskSource)
        assert source.capacity == len(flat) == 64 * MiB
        whole = b"".join(source.read(off, 8 * MiB) for off in range(0, source.capacity, 8 * MiB))
        assert whole == flat
        rng = random.Random(3)
        for _ in range(50):
            off = rng.randrange(0, source.capacity - 1)
            length = rng.randrange(1, min(2 * MiB, source.capacity - off) + 1)
            assert source.read(off, length) == flat[off : off + length]
        with pytest.raises(SourceError, match="beyond disk"):
            source.read(source.capacity - 10, 11)
    finally:
        source.close()


def test_changed_extents_of_a_first_backup_cover_every_written_byte(
    vcsim, vsphere_conn, written_vm, snapshot
):
    (disk,) = snapshot_disks(snapshot, written_vm.datacenter)
    source = open_vsphere_source(vsphere_conn, disk)
    try:
        extents = source.changed_extents(None)
        flat = vcsim.disk(written_vm.name).flat_path.read_bytes()
        covered = bytearray(len(flat))
        for e in extents:
            covered[e.offset : e.end] = flat[e.offset : e.end]
        assert bytes(covered) == flat  # nothing outside the extents is non-zero
        assert source.change_id == disk.change_id and disk.change_id
    finally:
        source.close()


def test_folder_endpoint_wants_the_session_cookie(vcsim, written_vm):
    disk = vcsim.disk(written_vm.name)
    ds, path = disk.file_name[1:].split("] ")
    flat = path.replace(".vmdk", "-flat.vmdk")
    url = f"http://{vcsim.host}:{vcsim.port}/folder/{flat}?dcPath=DC0&dsName={ds}"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=0-9"}), timeout=10)
    assert err.value.code == 401


def test_nbd_transport_says_it_is_not_built_yet(vsphere_conn, written_vm, snapshot):
    (disk,) = snapshot_disks(snapshot, written_vm.datacenter)
    with pytest.raises(SourceError, match="nbd transport .* is not built yet"):
        open_vsphere_source(vsphere_conn, disk, transport="nbd")


def test_file_transport_without_a_mount_for_the_datastore_is_a_clear_error(
    vsphere_conn, written_vm, snapshot
):
    (disk,) = snapshot_disks(snapshot, written_vm.datacenter)
    with pytest.raises(SourceError, match=r"datastore 'LocalDS_\d' has no local mount configured"):
        open_vsphere_source(vsphere_conn, disk, transport="file")


def test_unknown_transport_is_a_clear_error(vsphere_conn, written_vm, snapshot):
    (disk,) = snapshot_disks(snapshot, written_vm.datacenter)
    with pytest.raises(SourceError, match="unknown transport 'ftp'"):
        open_vsphere_source(vsphere_conn, disk, transport="ftp")


def test_http_reads_log_in_again_when_the_session_expired(vcsim, vsphere_conn, written_vm, snapshot):
    (disk,) = snapshot_disks(snapshot, written_vm.datacenter)
    flat = vcsim.disk(written_vm.name).flat_path.read_bytes()
    with connect(endpoint_of(vcsim)) as reader_conn:
        source = open_vsphere_source(reader_conn, disk)
        try:
            assert source.read(0, 4096) == flat[:4096]
            stale = reader_conn.session_cookie
            vsphere_conn.content.sessionManager.TerminateSession(
                [reader_conn.content.sessionManager.currentSession.key]
            )
            assert source.read(MiB, 4096) == flat[MiB : MiB + 4096]
            assert reader_conn.session_cookie != stale  # the 401 led to a new login
        finally:
            source.close()


def test_a_flat_file_shorter_than_the_disk_reads_as_zeros_past_its_end(vcsim_factory):
    sim = vcsim_factory(hosts=1, datastores=1, vms=1, disk_mb=8)
    vm_name = sim.vm_names()[0]
    flat = sim.disk(vm_name).flat_path
    data = random.Random(11).randbytes(MiB + 100)
    flat.write_bytes(data)  # a simulator's flat file may hold only what was written
    with connect(endpoint_of(sim)) as conn:
        vm = load_inventory(conn).vm(vm_name)
        with backup_snapshot(conn, vm.moref, run_id="short", job="t") as snap:
            (disk,) = snapshot_disks(snap, vm.datacenter)
            source = open_vsphere_source(conn, disk, transport="http")
            try:
                whole = source.read(0, source.capacity)
            finally:
                source.close()
    assert whole == data + bytes(8 * MiB - len(data))
