"""The Ray data path end to end on synthetic disks: full, incremental, dedup, failures."""

from __future__ import annotations

import pytest

from pipeline.config import parse_config
from pipeline.engine.backup import run_backup
from pipeline.engine.plans import synthetic_disk, synthetic_plans
from pipeline.store.backend import open_store
from pipeline.store.repository import Repository
from tests.integration.repo_checks import restored_bytes

pytestmark = pytest.mark.integration
MiB = 1 << 20


def job(url: str, extra: str = "", disks: str = "") -> object:
    disks = (
        disks
        or """
  - {vm: vm-a, disk: disk0, size: 24MiB, seed: 1, change_rate: 0.05}
  - {vm: vm-a, disk: disk1, size: 8MiB, seed: 2}
  - {vm: vm-b, disk: disk0, size: 16MiB, seed: 3}
"""
    )
    return parse_config(f"""
name: test
source: synthetic
repository: {{url: "{url}"}}
placement: {{cpus_per_task: 0.5, memory_per_task: 64MiB}}
{extra}
synthetic:{disks}
""")


def source_bytes(cfg, vm: str, disk: str, generation: int) -> bytes:  # noqa: ANN001
    d = next(d for d in cfg.synthetic if d.vm == vm and d.disk == disk)
    src = synthetic_disk(d, generation).open()
    return src.read(0, src.capacity)


@pytest.fixture
def repo_url(tmp_path) -> str:
    url = f"file://{tmp_path}/repo"
    Repository.init(open_store(url))
    return url


def test_full_then_incremental_restore_byte_identical(ray_local, repo_url):
    cfg = job(repo_url)
    repo = Repository.open(open_store(repo_url))
    full = run_backup(cfg, synthetic_plans(cfg, repo))
    assert not full.failed, [o.error for o in full.failed]
    incr = run_backup(cfg, synthetic_plans(cfg, repo))
    assert not incr.failed, [o.error for o in incr.failed]

    points = repo.restore_points()
    assert len(points) == 4
    for gen, batch in ((0, full), (1, incr)):
        for outcome in batch.outcomes:
            point = repo.restore_point(outcome.point_id)
            for d in point.disks:
                assert restored_bytes(repo, d.manifest_key) == source_bytes(
                    cfg, point.vm.name, d.disk_key, gen
                ), (gen, d)
    # the incremental read only what changed: a few % of the full
    assert incr.totals()["bytes_read"] < 0.25 * full.totals()["bytes_read"]
    assert all(not d.full_read for o in incr.outcomes for d in o.disks)


def test_two_vms_with_identical_disks_store_the_data_once(ray_local, repo_url):
    cfg = job(
        repo_url,
        disks="""
  - {vm: twin-1, disk: disk0, size: 16MiB, seed: 7, zero_share: 0, duplicate_share: 0}
  - {vm: twin-2, disk: disk0, size: 16MiB, seed: 7, zero_share: 0, duplicate_share: 0}
""",
    )
    repo = Repository.open(open_store(repo_url))
    summary = run_backup(cfg, synthetic_plans(cfg, repo))
    assert not summary.failed
    totals = summary.totals()
    assert totals["new_bytes"] == 16 * MiB
    assert totals["bytes_read"] == 32 * MiB


def test_a_run_report_is_written_for_every_run(ray_local, repo_url):
    from pipeline.engine.report import read_run_reports

    cfg = job(repo_url)
    repo = Repository.open(open_store(repo_url))
    run_backup(cfg, synthetic_plans(cfg, repo))
    table = read_run_reports(repo)
    assert table is not None and table.num_rows == 3
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert sum(table.column("bytes_read").to_pylist()) > 0
