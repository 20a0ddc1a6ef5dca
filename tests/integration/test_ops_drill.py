"""Restore drills: sampled VMs restored to scratch, checked, timed and recorded in the repository."""

from __future__ import annotations

import pytest

from pipeline.errors import UsageError
from pipeline.ops.drill import read_drill_reports, run_drill
from tests.integration.ops_world import back_up, job_for, new_location

pytestmark = pytest.mark.integration


def test_a_drill_records_restore_time_per_vm_in_the_repository(ray_local, tmp_path):
    location = new_location("local", tmp_path)
    back_up(job_for(location), location)
    report = run_drill(location, tmp_path / "scratch")
    assert report.ok, report.lines()
    assert [r.vm for r in report.rows] == ["vm-a", "vm-b"]
    assert all(r.restore_s > 0 and r.verify_s > 0 and r.restore_mib_s > 0 for r in report.rows)
    assert report.rows[0].capacity_bytes == 17 << 20 and report.rows[0].disks == 2
    assert not any((tmp_path / "scratch").rglob("*.img"))  # scratch is cleaned up

    sampled = run_drill(location, tmp_path / "scratch", sample=1, seed=3, keep=True)
    assert len(sampled.rows) == 1 and any((tmp_path / "scratch").rglob("*.img"))
    table = read_drill_reports(location.open())
    assert table.num_rows == 3 and set(table.column("drill_id").to_pylist()) == {
        report.drill_id,
        sampled.drill_id,
    }
    assert report.report_key.startswith("reports/drill-")


def test_a_damaged_vm_is_recorded_as_failed_and_the_others_still_run(ray_local, tmp_path):
    location = new_location("local", tmp_path)
    back_up(job_for(location), location)
    repo = location.open()
    point = [p for p in repo.restore_points() if p.vm.name == "vm-b"][0]
    victim = repo.read_manifest(point.disks[0].manifest_key).referenced_chunk_ids()[0].as_py()
    entry = repo.lookup(victim)
    pack = tmp_path / "repo" / "packs" / entry.pack_id[:2] / entry.pack_id
    data = bytearray(pack.read_bytes())
    data[entry.offset] ^= 1
    pack.write_bytes(bytes(data))

    report = run_drill(location, tmp_path / "scratch", vms=["vm-b", "vm-a"])
    by_vm = {r.vm: r for r in report.rows}
    assert by_vm["vm-a"].ok and not by_vm["vm-b"].ok and victim.hex() in by_vm["vm-b"].error
    assert not report.ok
    with pytest.raises(UsageError, match="no-such-vm"):
        run_drill(location, tmp_path / "scratch", vms=["no-such-vm"])
