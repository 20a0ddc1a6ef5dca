"""The driver of a backup run: plan the VMs, run their disks on Ray, commit restore points.

Per VM: prepare (vSphere: CBT, snapshot, changed areas; synthetic: nothing), one Ray task per disk
on a proxy slot, release the snapshot, flush the index shards, and only then write the restore
point record. A VM whose disks fail gets no restore point; the others go on.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import ray

from pipeline.config import JobConfig, PlacementConfig
from pipeline.engine.dedup import DedupIndex, RepoLocation
from pipeline.engine.disk_task import DiskJob, DiskResult, backup_disk
from pipeline.engine.placement import PlacementLimits, disk_task_options, local_node_resources
from pipeline.engine.stats import StageClock
from pipeline.errors import VmpumpError
from pipeline.store.locks import RepositoryLock
from pipeline.store.repository import Repository
from pipeline.store.restore_point import DiskRecord, RestorePoint, VmRef

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedVm:
    jobs: tuple[DiskJob, ...]
    consistency: str  # "application" | "filesystem" | "crash"


@dataclass(frozen=True)
class VmPlan:
    """One VM's work. ``prepare`` is entered just before its disks run and left right after."""

    name: str
    vm_id: str
    disks: tuple[str, ...]
    capacity: int
    incremental: bool
    prepare: Callable[[], AbstractContextManager[PreparedVm]]
    source_kind: str


@dataclass
class VmOutcome:
    name: str
    point_id: str | None = None
    consistency: str | None = None
    disks: list[DiskResult] = field(default_factory=list)
    error: str | None = None
    wall_s: float = 0.0


@dataclass
class RunSummary:
    run_id: str
    outcomes: list[VmOutcome]
    wall_s: float
    recovered_chunks: int
    report_key: str | None = None
    phases: dict[str, float] = field(default_factory=dict)  # driver-side time per phase

    @property
    def failed(self) -> list[VmOutcome]:
        return [o for o in self.outcomes if o.error is not None]

    def totals(self) -> dict[str, int]:
        keys = (
            "bytes_read",
            "zero_blocks",
            "dedup_blocks",
            "new_chunks",
            "new_bytes",
            "stored_bytes",
            "packs",
        )
        return {k: sum(getattr(d, k) for o in self.outcomes for d in o.disks) for k in keys}

    def stage_clock(self) -> StageClock:
        clock = StageClock()
        for o in self.outcomes:
            for d in o.disks:
                clock = clock.merged(d.stats)
        return clock


def new_run_id() -> str:
    return uuid.uuid4().hex


def location_of(cfg: JobConfig) -> RepoLocation:
    r = cfg.repository
    return RepoLocation(r.url, r.endpoint_url, r.region, r.addressing_style)


def previous_points(repo: Repository) -> dict[str, RestorePoint]:
    """The latest restore point of every VM id."""
    latest: dict[str, RestorePoint] = {}
    for p in repo.restore_points():  # sorted by time
        latest[p.vm.vm_id] = p
    return latest


def placement_limits(p: PlacementConfig) -> PlacementLimits:
    return PlacementLimits(
        slots_per_proxy=p.slots_per_proxy,
        cpus_per_task=p.cpus_per_task,
        memory_per_task_bytes=p.memory_per_task,
        max_snapshots_per_host=p.max_snapshots_per_host,
        max_snapshots_per_datastore=p.max_snapshots_per_datastore,
        max_reads_per_datastore=p.max_reads_per_datastore,
        max_disks_per_host=p.max_disks_per_host,
        latency_stop_ms=p.latency_stop_ms,
        latency_slow_ms=p.latency_slow_ms,
        adaptive=p.adaptive,
    )


def ensure_ray(cfg: JobConfig, address: str | None = None) -> None:
    """Join the cluster at ``address`` or start a local one whose node advertises proxy slots."""
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    else:
        ray.init(
            address="local",  # a new local instance, never some other Ray found on this machine
            resources=local_node_resources(placement_limits(cfg.placement)),
            logging_level=logging.WARNING,
            log_to_driver=False,
            include_dashboard=False,
        )


def run_backup(
    cfg: JobConfig,
    plans: list[VmPlan],
    *,
    on_progress: Callable[[str, int], None] | None = None,
    dedup_shards: int | None = None,
    lease_s: float = 30.0,
    max_parallel_vms: int | None = None,
    task_retries: int = 1,
    run_id: str | None = None,
) -> RunSummary:
    """Back up ``plans``; Ray must be initialized. Never raises for one VM's failure."""
    started = time.perf_counter()
    phases: dict[str, float] = {}
    run_id = run_id or new_run_id()
    location = location_of(cfg)
    repo = location.open()
    lock = repo.lock("shared", owner=f"backup:{cfg.name}:{run_id[:8]}", lease=LOCK_LEASE)
    keeper = _LockKeeper(lock)
    try:
        # a crashed run's packs are indexed first, so this run deduplicates against them
        recovered = repo.recover_unindexed_packs()
        phases["recover_s"] = time.perf_counter() - started
        index = DedupIndex.start(location, shards=dedup_shards, lease_s=lease_s)
        phases["index_start_s"] = time.perf_counter() - started - phases["recover_s"]
        progress = _ProgressSink.start() if on_progress is not None else None
        task = ray.remote(backup_disk).options(
            **disk_task_options(placement_limits(cfg.placement)), max_retries=task_retries
        )
        slots = max(1, int(ray.cluster_resources().get("backup_slots", 1)))
        parallel = max_parallel_vms or slots

        def one_vm(plan: VmPlan) -> VmOutcome:
            return _backup_vm(cfg, plan, repo, location, index, task, progress, lease_s)

        vms_started = time.perf_counter()
        try:
            with ThreadPoolExecutor(parallel, thread_name_prefix="vmpump-vm") as pool:
                futures = [pool.submit(one_vm, p) for p in plans]
                while wait(futures, timeout=0.25).not_done:
                    _drain(progress, on_progress)
                outcomes = [f.result() for f in futures]
            _drain(progress, on_progress)
        finally:
            index.stop()
        phases["vms_s"] = time.perf_counter() - vms_started
        summary = RunSummary(run_id, outcomes, time.perf_counter() - started, len(recovered), phases=phases)
        from pipeline.engine.report import write_run_report

        summary.report_key = write_run_report(repo, cfg.name, summary)
        return summary
    finally:
        keeper.stop()
        lock.release()


LOCK_LEASE = timedelta(minutes=10)


class _LockKeeper:
    """Refreshes the run's shared lock well within its lease, for runs of any length."""

    def __init__(self, lock: RepositoryLock) -> None:
        self._lock = lock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vmpump-lock", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(LOCK_LEASE.total_seconds() / 4):
            try:
                self._lock.refresh()
            except Exception as exc:  # the lease outlives a few failed refreshes; say so, go on
                log.warning("could not refresh the repository lock: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _drain(progress: ray.actor.ActorHandle | None, on_progress: Callable[[str, int], None] | None) -> None:
    if progress is None or on_progress is None:
        return
    for disk_key, nbytes in ray.get(progress.drain.remote()).items():
        on_progress(disk_key, nbytes)


def _backup_vm(
    cfg: JobConfig,
    plan: VmPlan,
    repo: Repository,
    location: RepoLocation,
    index: DedupIndex,
    task: ray.remote_function.RemoteFunction,
    progress: ray.actor.ActorHandle | None,
    lease_s: float,
) -> VmOutcome:
    outcome = VmOutcome(plan.name)
    started = time.perf_counter()
    try:
        with plan.prepare() as prepared:
            refs = [
                task.remote(job, location, index, progress=_remote_progress(progress), lease_s=lease_s)
                for job in prepared.jobs
            ]
            results: list[DiskResult] = ray.get(refs)
        # the snapshot is gone here; make every new chunk findable, then publish the point
        index.flush()
        point = RestorePoint(
            id=RestorePoint.new_id(),
            vm=VmRef(plan.name, plan.vm_id),
            created=datetime.now(timezone.utc),
            disks=tuple(
                DiskRecord(
                    r.disk_key,
                    r.label,
                    r.capacity,
                    r.manifest_key,
                    r.change_id,
                    r.full_read,
                    r.full_read_reason,
                )
                for r in results
            ),
            consistency=prepared.consistency,  # type: ignore[arg-type]
            source_kind=plan.source_kind,
            job_name=cfg.name,
            stats={
                "bytes_read": sum(r.bytes_read for r in results),
                "new_bytes": sum(r.new_bytes for r in results),
                "stored_bytes": sum(r.stored_bytes for r in results),
                "wall_s": time.perf_counter() - started,
            },
        )
        repo.commit_restore_point(point)
        outcome.point_id, outcome.consistency, outcome.disks = point.id, point.consistency, results
    except Exception as exc:  # one VM's failure is reported, the run goes on
        outcome.error = _one_line(exc)
        log.error("backup of %s failed: %s", plan.name, outcome.error)
    outcome.wall_s = time.perf_counter() - started
    return outcome


def _one_line(exc: BaseException) -> str:
    """A user-facing cause, unwrapping Ray's task error around ours."""
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            exc = cause
    if isinstance(exc, VmpumpError):
        return str(exc)
    if isinstance(exc, ray.exceptions.WorkerCrashedError | ray.exceptions.RayActorError):
        return "a worker process died during the backup — nothing was committed for this VM; rerun the job"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _remote_progress(sink: ray.actor.ActorHandle | None) -> Callable[[str, int], None] | None:
    return None if sink is None else _ProgressCall(sink)


@dataclass(frozen=True)
class _ProgressCall:
    sink: ray.actor.ActorHandle

    def __call__(self, disk_key: str, nbytes: int) -> None:
        self.sink.add.remote(disk_key, nbytes)  # fire and forget: progress must never slow the data path


class _ProgressSink:
    """Collects byte counts from workers; the driver drains it a few times a second."""

    def __init__(self) -> None:
        self.pending: dict[str, int] = {}

    def add(self, disk_key: str, nbytes: int) -> None:
        self.pending[disk_key] = self.pending.get(disk_key, 0) + nbytes

    def drain(self) -> dict[str, int]:
        out, self.pending = self.pending, {}
        return out

    @classmethod
    def start(cls) -> ray.actor.ActorHandle:
        return ray.remote(num_cpus=0)(cls).remote()
