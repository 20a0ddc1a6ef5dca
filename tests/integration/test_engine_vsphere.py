"""vmpump backup against the vCenter simulator: full, CBT-incremental, dedup, guard, failures.

Restored bytes are compared with the simulator's flat files; after every run no vmpump snapshot
may remain on any VM.
"""

from __future__ import annotations

import random

import pytest

from pipeline.config import parse_config
from pipeline.engine.backup import new_run_id, run_backup
from pipeline.engine.plans import open_plans
from pipeline.store.backend import open_store
from pipeline.store.repository import Repository
from pipeline.vsphere.connection import connect
from pipeline.vsphere.inventory import load_inventory
from tests.fixtures.vcsim import endpoint_of
from tests.integration.repo_checks import restored_bytes

pytestmark = pytest.mark.integration
MiB = 1 << 20


@pytest.fixture(scope="module")
def sim(vcsim_factory):  # noqa: ANN201
    sim = vcsim_factory(hosts=2, datastores=2, vms=3, disk_mb=24, cbt_page_bytes=2 * MiB)
    rng = random.Random(5)
    shared = [(o * MiB, rng.randbytes(MiB)) for o in range(0, 20, 3)]
    names = sim.vm_names()
    sim.write_disk_many(names[0], 0, shared)
    sim.write_disk_many(names[1], 0, shared)  # an identical twin: stored once
    sim.write_disk_many(names[2], 0, [(5 * MiB + 123, rng.randbytes(3 * MiB))])
    sim.set_tools_running(names[0], True, "linuxGuest")
    return sim


def _job(sim, repo_url: str, extra: str = ""):  # noqa: ANN001, ANN202
    return parse_config(f"""
name: vs
vcenter: {{host: "{sim.host}", port: {sim.port}, user: {sim.user}, password_env: VMPUMP_TEST_VC_PW, protocol: http}}
repository: {{url: "{repo_url}"}}
placement: {{cpus_per_task: 0.5, memory_per_task: 64MiB}}
backup: {{cbt_guard_share: 0.05{extra}}}
""")


@pytest.fixture
def repo_url(tmp_path, sim, monkeypatch) -> str:  # noqa: ANN001
    monkeypatch.setenv("VMPUMP_TEST_VC_PW", sim.password)
    url = f"file://{tmp_path}/repo"
    Repository.init(open_store(url))
    return url


def _backup(cfg):  # noqa: ANN001, ANN202
    repo = Repository.open(open_store(cfg.repository.url))
    run_id = new_run_id()
    with open_plans(cfg, repo, run_id) as plans:
        summary = run_backup(cfg, plans, run_id=run_id)
    return repo, summary


def _no_vmpump_snapshots(sim) -> None:  # noqa: ANN001
    with connect(endpoint_of(sim)) as conn:
        for vm in load_inventory(conn).vms:
            assert not [s for s in vm.snapshots if s.name.startswith("vmpump-")], vm.name


def _point_matches_flat_files(repo, sim, summary) -> None:  # noqa: ANN001
    for outcome in summary.outcomes:
        point = repo.restore_point(outcome.point_id)
        (disk,) = point.disks
        assert restored_bytes(repo, disk.manifest_key) == sim.disk(point.vm.name).flat_path.read_bytes()


def test_full_then_incremental_backups_restore_the_flat_files(ray_local, sim, repo_url):
    cfg = _job(sim, repo_url)
    repo, full = _backup(cfg)
    assert not full.failed, [o.error for o in full.failed]
    assert len(full.outcomes) == 3
    _point_matches_flat_files(repo, sim, full)
    _no_vmpump_snapshots(sim)
    consistency = {o.name: o.consistency for o in full.outcomes}
    assert consistency[sim.vm_names()[0]] == "filesystem"  # Tools ran: quiesced
    assert consistency[sim.vm_names()[1]] == "crash"
    # the twins' data is stored once: new bytes are the distinct data, not three disks' worth
    t = full.totals()
    assert t["new_bytes"] <= 7 * MiB + 4 * MiB + 2 * MiB

    sim.write_disk(sim.vm_names()[0], 0, 2 * MiB + 7, b"changed!" * 1000)
    repo, incr = _backup(cfg)
    assert not incr.failed, [o.error for o in incr.failed]
    _point_matches_flat_files(repo, sim, incr)
    changed = next(o for o in incr.outcomes if o.name == sim.vm_names()[0]).disks[0]
    assert not changed.full_read and changed.bytes_read <= 2 * MiB
    assert changed.guard_sampled > 0 and changed.guard_mismatches == 0
    _no_vmpump_snapshots(sim)


def test_a_cbt_answer_that_omits_a_change_is_caught_by_the_guard(ray_local, sim, repo_url):
    cfg = _job(sim, repo_url, extra=", cbt_guard_share: 1.0")
    _, full = _backup(cfg)
    assert not full.failed
    victim = sim.vm_names()[2]
    sim.write_disk(victim, 0, 15 * MiB, b"\x5a" * MiB)
    sim.make_cbt_lie("omit")
    try:
        repo, incr = _backup(cfg)
    finally:
        sim.make_cbt_lie(None)
    assert not incr.failed, [o.error for o in incr.failed]
    disk = next(o for o in incr.outcomes if o.name == victim).disks[0]
    assert disk.guard_mismatches > 0 and disk.full_read and "CBT guard" in disk.full_read_reason
    _point_matches_flat_files(repo, sim, incr)
    _no_vmpump_snapshots(sim)


def test_a_disk_that_cannot_be_read_fails_its_vm_and_removes_the_snapshot(ray_local, sim, repo_url, tmp_path):
    cfg = _job(sim, repo_url, extra=f', transport: file, datastore_paths: {{nowhere: "{tmp_path}"}}')
    repo, summary = _backup(cfg)
    assert len(summary.failed) == 3
    assert all("\n" not in o.error and "datastore" in o.error for o in summary.failed), summary.failed[
        0
    ].error
    assert repo.restore_points() == []
    _no_vmpump_snapshots(sim)
