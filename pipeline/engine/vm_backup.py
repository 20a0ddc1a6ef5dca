"""One VM of a run: admission, snapshot, its disks on proxy slots, then the restore point.

The admission actor grants the VM's snapshot together with its first disk's read, so a snapshot
is taken only when a read slot is free for it and never waits open in a queue; the other disks
ask for their reads once the snapshot exists. Grants are held by context managers that renew
them and give them back however the VM ends.
"""

from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

import ray

from pipeline.engine.dedup import DedupIndex, RepoLocation
from pipeline.engine.disk_task import DiskResult
from pipeline.errors import VmpumpError
from pipeline.store.repository import Repository
from pipeline.store.restore_point import DiskRecord, RestorePoint, VmRef

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunContext:
    """What every VM of a run shares."""

    job_name: str
    repo: Repository
    location: RepoLocation
    index: DedupIndex
    task: Any  # the Ray remote function of backup_disk, with its placement options
    admission: Any  # the admission actor handle, or None to run without admission
    progress: Any  # a progress callable for workers, or None
    lease_s: float


def backup_vm(ctx: RunContext, plan: Any) -> Any:  # VmPlan -> VmOutcome (typed in backup.py)
    from pipeline.engine.backup import VmOutcome

    outcome = VmOutcome(plan.name)
    started = time.perf_counter()
    try:
        results, consistency = _read_disks(ctx, plan, outcome)
        # the snapshot is gone here; make every new chunk findable, then publish the point
        ctx.index.flush()
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
            consistency=consistency,
            source_kind=plan.source_kind,
            job_name=ctx.job_name,
            stats={
                "bytes_read": sum(r.bytes_read for r in results),
                "new_bytes": sum(r.new_bytes for r in results),
                "stored_bytes": sum(r.stored_bytes for r in results),
                "admission_wait_s": outcome.admission_wait_s,
                "wall_s": time.perf_counter() - started,
            },
        )
        ctx.repo.commit_restore_point(point, unindexed=ctx.index.unindexed)
        outcome.point_id, outcome.consistency, outcome.disks = point.id, point.consistency, results
    except Exception as exc:  # one VM's failure is reported, the run goes on
        outcome.error = one_line(exc)
        log.error("backup of %s failed: %s", plan.name, outcome.error)
    outcome.wall_s = time.perf_counter() - started
    return outcome


def _read_disks(ctx: RunContext, plan: Any, outcome: Any) -> tuple[list[DiskResult], str]:
    from pipeline.engine.admission import admitted_read_sync, admitted_vm_sync

    datastores = list(plan.datastores) or ["local"]
    with ExitStack() as grants:
        waited = time.perf_counter()
        if ctx.admission is not None:
            grants.enter_context(
                admitted_vm_sync(ctx.admission, plan.vm_id, plan.host, sorted(set(datastores)), datastores[0])
            )
        outcome.admission_wait_s += time.perf_counter() - waited
        with plan.prepare() as prepared:
            refs = []
            for i, job in enumerate(prepared.jobs):
                datastore = job.datastore or datastores[min(i, len(datastores) - 1)]
                job = replace(job, datastore=datastore)
                if ctx.admission is not None and i > 0:
                    waited = time.perf_counter()
                    grants.enter_context(admitted_read_sync(ctx.admission, plan.vm_id, plan.host, datastore))
                    outcome.admission_wait_s += time.perf_counter() - waited
                refs.append(
                    ctx.task.remote(
                        job,
                        ctx.location,
                        ctx.index,
                        progress=ctx.progress,
                        lease_s=ctx.lease_s,
                        admission=ctx.admission,
                    )  # fmt: skip
                )
            results: list[DiskResult] = ray.get(refs)
    return results, prepared.consistency


def one_line(exc: BaseException) -> str:
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
