"""The CBT guard catches a change-tracking answer that omits a changed area."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import partial

import pytest
import ray.cloudpickle

from pipeline.config import parse_config
from pipeline.engine.backup import PreparedVm, VmPlan, run_backup
from pipeline.engine.disk_task import DiskJob
from pipeline.engine.plans import no_preparation
from pipeline.extents import Extent, clip, gaps
from pipeline.source.synthetic import SyntheticDisk, SyntheticSource
from pipeline.store.backend import open_store
from pipeline.store.repository import Repository
from tests.integration.repo_checks import restored_bytes

pytestmark = pytest.mark.integration
MiB = 1 << 20
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class _LyingSource(SyntheticSource):
    """Answers changed areas like a buggy CBT: the first changed MiB is left out."""

    def changed_extents(self, since: str | None) -> list[Extent]:
        truth = super().changed_extents(since)
        if since is None or not truth:
            return truth
        first = Extent(truth[0].offset, MiB)
        return [e for t in truth for e in gaps([first], t.offset, t.end) if clip([e], t.offset, t.end)]


@dataclass(frozen=True)
class LyingDisk:
    disk: SyntheticDisk

    def open(self) -> _LyingSource:
        return _LyingSource(self.disk)


DISK = SyntheticDisk(size=64 * MiB, seed=21, zero_share=0.2, change_rate=0.05)


def _plan(source: object, previous: tuple[str | None, str | None], share: float) -> VmPlan:
    job = DiskJob(
        "liar",
        "synthetic:liar",
        "disk0",
        "disk0",
        source,
        since=previous[0],  # type: ignore[arg-type]
        previous_manifest=previous[1],
        guard_share=share,
    )
    return VmPlan(
        "liar",
        "synthetic:liar",
        ("disk0",),
        DISK.size,
        previous[1] is not None,
        partial(no_preparation, PreparedVm((job,), "crash")),
        "synthetic",
    )


@pytest.fixture
def cfg(tmp_path, ray_local):  # noqa: ANN201
    url = f"file://{tmp_path}/repo"
    Repository.init(open_store(url))
    return parse_config(f"""
name: guard
source: synthetic
repository: {{url: "{url}"}}
placement: {{cpus_per_task: 0.5, memory_per_task: 64MiB}}
synthetic: [{{vm: liar, size: 64MiB}}]
""")


def _full_then_incremental(cfg, source_spec, share: float):  # noqa: ANN001, ANN202
    assert not run_backup(cfg, [_plan(DISK, (None, None), share)]).failed
    repo = Repository.open(open_store(cfg.repository.url))
    (first,) = repo.restore_points()
    d = first.disks[0]
    summary = run_backup(cfg, [_plan(source_spec, (d.change_id, d.manifest_key), share)])
    assert not summary.failed, summary.failed[0].error
    return repo, summary


def test_a_lying_cbt_is_caught_and_the_disk_is_read_in_full(cfg):
    repo, summary = _full_then_incremental(cfg, LyingDisk(DISK.at_generation(1)), share=1.0)
    (disk,) = summary.outcomes[0].disks
    assert disk.guard_mismatches >= 1
    assert disk.full_read and "CBT guard" in disk.full_read_reason
    point = repo.restore_point("latest")
    assert point.disks[0].full_read and "CBT guard" in point.disks[0].full_read_reason
    assert restored_bytes(repo, point.disks[0].manifest_key) == DISK.at_generation(1).open().read(
        0, DISK.size
    )


def test_a_truthful_cbt_passes_the_guard_and_stays_incremental(cfg):
    repo, summary = _full_then_incremental(cfg, DISK.at_generation(1), share=0.5)
    (disk,) = summary.outcomes[0].disks
    assert disk.guard_sampled >= 8 and disk.guard_mismatches == 0
    assert not disk.full_read
    point = repo.restore_point("latest")
    assert restored_bytes(repo, point.disks[0].manifest_key) == DISK.at_generation(1).open().read(
        0, DISK.size
    )
