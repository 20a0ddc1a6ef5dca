"""A worker killed mid-disk: the run retries or fails clearly, never commits a partial point,
and a rerun reuses what was uploaded."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import ray.cloudpickle

from pipeline.config import parse_config
from pipeline.engine.backup import PreparedVm, VmPlan, run_backup
from pipeline.engine.disk_task import DiskJob
from pipeline.engine.plans import no_preparation
from pipeline.source.synthetic import SyntheticDisk, SyntheticSource
from pipeline.store.backend import open_store
from pipeline.store.repository import Repository
from tests.integration.repo_checks import restored_bytes

pytestmark = pytest.mark.integration
MiB = 1 << 20
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the slow source runs in workers


class _SlowSource(SyntheticSource):
    def __init__(self, disk: SyntheticDisk, delay: float) -> None:
        super().__init__(disk)
        self.delay = delay

    def read(self, offset: int, length: int) -> bytes:
        time.sleep(self.delay)
        return super().read(offset, length)


@dataclass(frozen=True)
class SlowDisk:
    """A synthetic disk whose reads are slow, and that says which process reads it."""

    disk: SyntheticDisk
    pid_file: str
    delay: float

    def open(self) -> _SlowSource:
        Path(self.pid_file).write_text(str(os.getpid()))
        return _SlowSource(self.disk, self.delay)


DISK = SyntheticDisk(size=48 * MiB, seed=11, zero_share=0.1, duplicate_share=0.0)


def plan_for(source: object) -> VmPlan:
    job = DiskJob("victim", "synthetic:victim", "disk0", "disk0", source)  # type: ignore[arg-type]
    return VmPlan(
        "victim",
        "synthetic:victim",
        ("disk0",),
        DISK.size,
        False,
        partial(no_preparation, PreparedVm((job,), "crash")),
        "synthetic",
    )


@pytest.fixture
def small_pack_repo(tmp_path) -> str:
    url = f"file://{tmp_path}/repo"
    Repository.init(open_store(url), pack_size=2 * MiB)  # packs land early, before the kill
    return url


def _cfg(url: str):  # noqa: ANN202
    return parse_config(f"""
name: kill
source: synthetic
repository: {{url: "{url}"}}
placement: {{cpus_per_task: 0.5, memory_per_task: 64MiB}}
synthetic: [{{vm: victim, size: 48MiB}}]
""")


def _kill_when_packs_exist(pid_file: Path, repo_dir: Path, killed: list[int]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        packs = list((repo_dir / "packs").rglob("*")) if (repo_dir / "packs").exists() else []
        complete = [p for p in packs if p.is_file() and ".vmpump-tmp-" not in p.name]
        if pid_file.exists() and len(complete) >= 2:
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.05)


def test_a_killed_worker_is_retried_and_the_point_is_complete(ray_local, small_pack_repo, tmp_path):
    pid_file = tmp_path / "pid"
    killed: list[int] = []
    killer = threading.Thread(target=_kill_when_packs_exist, args=(pid_file, tmp_path / "repo", killed))
    killer.start()
    summary = run_backup(_cfg(small_pack_repo), [plan_for(SlowDisk(DISK, str(pid_file), 0.05))], lease_s=2.0)
    killer.join()
    assert killed, "the worker was never killed"
    assert not summary.failed, summary.failed[0].error
    repo = Repository.open(open_store(small_pack_repo))
    (point,) = repo.restore_points()
    assert restored_bytes(repo, point.disks[0].manifest_key) == DISK.open().read(0, DISK.size)


def test_a_killed_worker_without_retries_fails_clearly_and_a_rerun_reuses_packs(
    ray_local, small_pack_repo, tmp_path
):
    pid_file = tmp_path / "pid"
    killed: list[int] = []
    killer = threading.Thread(target=_kill_when_packs_exist, args=(pid_file, tmp_path / "repo", killed))
    killer.start()
    cfg = _cfg(small_pack_repo)
    summary = run_backup(cfg, [plan_for(SlowDisk(DISK, str(pid_file), 0.05))], lease_s=2.0, task_retries=0)
    killer.join()
    assert killed
    (failed,) = summary.failed
    assert "worker" in failed.error and "\n" not in failed.error
    repo = Repository.open(open_store(small_pack_repo))
    assert repo.restore_points() == []

    rerun = run_backup(cfg, [plan_for(SlowDisk(DISK, str(pid_file), 0.0))], lease_s=2.0)
    assert not rerun.failed
    assert rerun.recovered_chunks > 0
    totals = rerun.totals()
    assert totals["new_bytes"] < totals["bytes_read"] - rerun.recovered_chunks * MiB // 2
    (point,) = repo.restore_points()
    assert restored_bytes(repo, point.disks[0].manifest_key) == DISK.open().read(0, DISK.size)
