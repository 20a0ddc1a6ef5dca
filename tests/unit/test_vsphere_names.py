"""Snapshot markers, datastore paths, and the harness's loud failure without Go."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from pipeline.source import SourceError
from pipeline.source.vsphere import SnapshotDisk, open_vsphere_source, split_datastore_path
from pipeline.vsphere.sim import SimulatorError, build_binary
from pipeline.vsphere.snapshots import snapshot_description, snapshot_name


def test_snapshot_name_and_description_carry_the_vmpump_marker():
    assert snapshot_name("20261125-0100") == "vmpump-20261125-0100"
    when = datetime(2026, 11, 25, 1, 2, 3, tzinfo=timezone.utc)
    assert snapshot_description("nightly", "r1", when) == "vmpump:nightly:r1:2026-11-25T01:02:03Z"


def test_snapshot_disk_reads_the_flat_file_of_the_disk_it_names():
    disk = SnapshotDisk("vm-1", "snapshot-2", 2000, 1 << 20, "[ds 1] my vm/my vm_1.vmdk", "DC0", "52 aa/3")
    assert disk.datastore == "ds 1"
    assert disk.flat_path == "my vm/my vm_1-flat.vmdk"


def test_a_snapshot_disk_that_is_a_delta_on_older_snapshots_is_refused_not_read_flat():
    disk = SnapshotDisk(
        "vm-1", "snapshot-9", 2000, 1 << 20, "[ds1] vm/vm-000001.vmdk", "DC0", "52 aa/3", "[ds1] vm/vm.vmdk"
    )
    for transport in ("http", "file"):
        with pytest.raises(SourceError, match="is a delta on .ds1. vm/vm.vmdk") as err:
            open_vsphere_source(None, disk, transport)  # type: ignore[arg-type]  # refused before any I/O
        assert "consolidate" in err.value.hint


def test_a_file_name_without_a_datastore_is_refused():
    with pytest.raises(SourceError, match="is not a datastore path"):
        split_datastore_path("/vmfs/volumes/x/disk.vmdk")


def test_missing_go_fails_loudly_with_the_apt_command(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SimulatorError) as err:
        build_binary(cache_dir=tmp_path)
    assert "apt-get install -y golang-go golang-github-vmware-govmomi-dev" in err.value.hint
