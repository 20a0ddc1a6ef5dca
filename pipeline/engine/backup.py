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
from datetime import timedelta

import ray

from pipeline.config import JobConfig, PlacementConfig
from pipeline.engine.admission import start_admission
from pipeline.engine.bottleneck import BottleneckReport, analyze_bottleneck
from pipeline.engine.dedup import DedupIndex, RepoLocation
from pipeline.engine.disk_task import COUNTERS, DiskJob, DiskResult, backup_disk, warm_up_workers
from pipeline.engine.placement import PlacementLimits, disk_task_options, local_node_resources
from pipeline.engine.stats import StageClock
from pipeline.engine.vm_backup import RunContext, backup_vm
from pipeline.store.locks import RepositoryLock
from pipeline.store.repository import Repository
from pipeline.store.restore_point import RestorePoint

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
    host: str = "local"  # ESXi host: admission caps snapshots and reads per host
    datastores: tuple[str, ...] = ("local",)  # of each disk, in disk order


@dataclass
class VmOutcome:
    name: str
    admission_wait_s: float = 0.0
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
    slots: int = 1  # proxy slots the run could use
    grants: list = field(default_factory=list)  # admission GrantEvents: who held what, when
    latency_decisions: list = field(default_factory=list)  # the latency gate's decisions, with reasons

    @property
    def failed(self) -> list[VmOutcome]:
        return [o for o in self.outcomes if o.error is not None]

    def totals(self) -> dict[str, int]:
        return {k: sum(getattr(d, k) for o in self.outcomes for d in o.disks) for k in COUNTERS}

    def stage_clock(self) -> StageClock:
        """Busy time and bytes per stage over every disk, with the VMs' waits for admission."""
        clock = StageClock()
        for o in self.outcomes:
            for d in o.disks:
                clock = clock.merged(d.stats)
            clock.add("admission_wait", o.admission_wait_s)
        return clock

    def bottleneck(self, cores_per_proxy: int = 8) -> BottleneckReport | None:
        disks = sum(len(o.disks) for o in self.outcomes)
        if not disks or self.wall_s <= 0:
            return None
        clock = self.stage_clock()
        return analyze_bottleneck(
            clock.busy_s,
            clock.bytes,
            self.wall_s,
            max(1, min(self.slots, disks)),
            cores_per_proxy=cores_per_proxy,
        )


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
    # a local instance gets a token of its own; saying so on every command is noise
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
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
    admit: bool = True,
    latency_source: Callable[[], object] | None = None,
    latency_poll_s: float = 20.0,
) -> RunSummary:
    """Back up ``plans``; Ray must be initialized. Never raises for one VM's failure.

    With ``admit`` (the default) an admission actor enforces the job's per-host and per-datastore
    limits and the latency gate fed by ``latency_source`` (a factory, run inside the actor).
    """
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
        limits = placement_limits(cfg.placement)
        task = ray.remote(backup_disk).options(**disk_task_options(limits), max_retries=task_retries)
        slots = max(1, int(ray.cluster_resources().get("backup_slots", 1)))
        key = _ServicesKey(
            location, dedup_shards, lease_s, limits if admit else None, latency_source, latency_poll_s
        )
        if not _kept_fits(key):
            # a first run: worker processes boot (and import the disk task) while the index and
            # admission start; a driver's later runs find them idle already
            warm_up_workers(limits, min(slots, sum(len(p.disks) for p in plans)))
        services = _acquire_services(key)
        index, admission = services.index, services.admission
        phases["services_s"] = time.perf_counter() - started - phases["recover_s"]
        progress = _ProgressSink.start() if on_progress is not None else None
        # twice the slots wait in admission, largest VMs first: the night the window planner models
        parallel = max_parallel_vms or 2 * slots
        plans = sorted(plans, key=lambda p: -p.capacity)
        ctx = RunContext(
            cfg.name, repo, location, index, task, admission, _remote_progress(progress), lease_s
        )

        def one_vm(plan: VmPlan) -> VmOutcome:
            return backup_vm(ctx, plan)

        vms_started = time.perf_counter()
        try:
            with ThreadPoolExecutor(parallel, thread_name_prefix="vmpump-vm") as pool:
                futures = [pool.submit(one_vm, p) for p in plans]
                while wait(futures, timeout=0.25).not_done:
                    _drain(progress, on_progress)
                outcomes = [f.result() for f in futures]
            _drain(progress, on_progress)
        finally:
            grants, decisions = _admission_logs(admission)
            _release_services(services)
            if progress is not None:
                ray.kill(progress)
        phases["vms_s"] = time.perf_counter() - vms_started
        summary = RunSummary(
            run_id, outcomes, time.perf_counter() - started, len(recovered), phases=phases, slots=slots
        )
        summary.grants, summary.latency_decisions = grants, decisions
        from pipeline.engine.report import write_run_report

        summary.report_key = write_run_report(repo, cfg.name, summary)
        return summary
    finally:
        keeper.stop()
        lock.release()


LOCK_LEASE = timedelta(minutes=10)


@dataclass(frozen=True)
class _ServicesKey:
    """What a run's index shards and admission actor were started for: equal keys share them."""

    location: RepoLocation
    shards: int | None
    lease_s: float
    limits: PlacementLimits | None  # None: the run has no admission actor
    latency_source: object
    latency_poll_s: float


@dataclass
class _RunServices:
    """The dedup index shards and the admission actor of a run.

    A driver that runs backup after backup (a scheduler, a benchmark, a test session) keeps the
    last run's services and hands them to the next run with the same key: the shards re-read the
    index segments and damaged markers written since, the admission actor starts a fresh log, and
    the run pays no actor start-up. They belong to one Ray session and die with the driver."""

    key: _ServicesKey
    session: tuple[str, str]
    index: DedupIndex
    admission: ray.actor.ActorHandle | None
    in_use: bool = True

    def stop(self) -> None:
        self.index.stop()
        if self.admission is not None:
            ray.kill(self.admission)


_kept: _RunServices | None = None
_kept_lock = threading.Lock()
_HEALTH_TIMEOUT_S = 60.0


def _ray_session() -> tuple[str, str]:
    context = ray.get_runtime_context()
    return context.get_job_id(), context.get_node_id()


def _fits(kept: _RunServices | None, key: _ServicesKey, session: tuple[str, str]) -> bool:
    """Whether ``kept`` may serve a run with ``key`` in this Ray session (call under the lock)."""
    return kept is not None and not kept.in_use and kept.key == key and kept.session == session


def _kept_fits(key: _ServicesKey) -> bool:
    with _kept_lock:
        return _fits(_kept, key, _ray_session())


def _acquire_services(key: _ServicesKey) -> _RunServices:
    """The kept services when they fit this run and still answer, else new ones."""
    global _kept
    session = _ray_session()
    with _kept_lock:
        kept = _kept
        reusable = _fits(kept, key, session)
        if reusable:
            kept.in_use = True
    if reusable:
        assert kept is not None
        try:
            kept.index.refresh(timeout_s=_HEALTH_TIMEOUT_S)
            idle = kept.admission is None or ray.get(
                kept.admission.begin_run.remote(), timeout=_HEALTH_TIMEOUT_S
            )
            if idle:
                return kept
            log.warning("the kept admission actor still holds grants; starting new services")
        except (ray.exceptions.RayError, TimeoutError) as exc:
            log.warning("the kept index shards or admission actor are gone (%s); starting new ones", exc)
        with _kept_lock:
            if _kept is kept:
                _kept = None
        _stop_quietly(kept)
    index = DedupIndex.start(key.location, shards=key.shards, lease_s=key.lease_s)
    admission = None
    if key.limits is not None:
        admission = start_admission(
            key.limits,
            key.latency_source,  # type: ignore[arg-type]
            poll_interval_s=key.latency_poll_s,
        )
    return _RunServices(key, session, index, admission)


def _release_services(services: _RunServices) -> None:
    """Keep the run's services for the next run; stop whatever they replace."""
    global _kept
    with _kept_lock:
        kept = _kept
        if kept is services:
            services.in_use = False
            return
        if kept is not None and kept.in_use:  # another run of this driver holds the kept ones
            drop = services
        else:
            _kept, services.in_use, drop = services, False, kept
    if drop is not None and drop.session == _ray_session():  # an ended session's actors are gone
        _stop_quietly(drop)


def stop_kept_services() -> None:
    """Stop the services kept for the next run (the next run starts its own)."""
    global _kept
    with _kept_lock:
        kept, _kept = _kept, None
    if kept is not None and not kept.in_use and ray.is_initialized() and kept.session == _ray_session():
        _stop_quietly(kept)


def _stop_quietly(services: _RunServices) -> None:
    try:
        services.stop()
    except Exception as exc:  # actors of a session that ended: nothing left to stop
        log.debug("stopping run services: %s", exc)


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


def _admission_logs(admission: ray.actor.ActorHandle | None) -> tuple[list, list]:
    """What the admission actor granted and decided, for the run summary; nothing if it is gone."""
    if admission is None:
        return [], []
    try:
        return ray.get(admission.grants_log.remote()), ray.get(admission.decisions_log.remote())
    except ray.exceptions.RayError as exc:
        log.warning("the admission actor's logs are lost: %s", exc)
        return [], []


def _drain(progress: ray.actor.ActorHandle | None, on_progress: Callable[[str, int], None] | None) -> None:
    if progress is None or on_progress is None:
        return
    for disk_key, nbytes in ray.get(progress.drain.remote()).items():
        on_progress(disk_key, nbytes)


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
