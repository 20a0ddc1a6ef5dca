"""Turn a job configuration into per-VM plans, each knowing how to prepare its disks.

vSphere plans take the snapshot in ``prepare`` (see ``vsphere_plans``); synthetic plans regenerate
their disks, one generation further per restore point, so nightly change is simulated exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

from pipeline.config import JobConfig, SyntheticDiskConfig
from pipeline.engine.backup import PreparedVm, VmPlan, previous_points
from pipeline.engine.disk_task import DiskJob
from pipeline.source.synthetic import SyntheticDisk
from pipeline.store.repository import Repository


def synthetic_disk(d: SyntheticDiskConfig, generation: int) -> SyntheticDisk:
    return SyntheticDisk(
        size=d.size,
        seed=d.seed,
        zero_share=d.zero_share,
        duplicate_share=d.duplicate_share,
        compressible_share=d.compressible_share,
        change_rate=d.change_rate,
        generation=generation,
    )


def synthetic_plans(cfg: JobConfig, repo: Repository) -> list[VmPlan]:
    previous = previous_points(repo)
    generations: dict[str, int] = {}
    for p in repo.restore_points():
        generations[p.vm.vm_id] = generations.get(p.vm.vm_id, 0) + 1
    by_vm: dict[str, list[SyntheticDiskConfig]] = {}
    for d in cfg.synthetic:
        if cfg.selection.matches(d.vm):
            by_vm.setdefault(d.vm, []).append(d)
    plans = []
    for vm, disks in by_vm.items():
        vm_id = f"synthetic:{vm}"
        prev = previous.get(vm_id)
        prev_disks = {r.disk_key: r for r in prev.disks} if prev else {}
        jobs = []
        for d in disks:
            old = prev_disks.get(d.disk)
            jobs.append(
                DiskJob(
                    vm_name=vm,
                    vm_id=vm_id,
                    disk_key=d.disk,
                    label=d.disk,
                    source=synthetic_disk(d, generations.get(vm_id, 0)),
                    since=old.change_id if old else None,
                    previous_manifest=old.manifest_key if old else None,
                    guard_share=cfg.backup.cbt_guard_share,
                )
            )
        plans.append(
            VmPlan(
                name=vm,
                vm_id=vm_id,
                disks=tuple(d.disk for d in disks),
                capacity=sum(d.size for d in disks),
                incremental=prev is not None,
                prepare=partial(no_preparation, PreparedVm(tuple(jobs), "crash")),
                source_kind="synthetic",
            )
        )
    return plans


@contextmanager
def no_preparation(prepared: PreparedVm) -> Iterator[PreparedVm]:
    """``VmPlan.prepare`` for VMs whose disks need no snapshot: the jobs as they are."""
    yield prepared


@contextmanager
def open_plans(cfg: JobConfig, repo: Repository, run_id: str) -> Iterator[list[VmPlan]]:
    """The plans of a job, for whatever source it names, valid until the block ends."""
    if cfg.source == "synthetic":
        yield synthetic_plans(cfg, repo)
        return
    from pipeline.engine.vsphere_plans import vsphere_plans

    with vsphere_plans(cfg, repo, run_id) as plans:
        yield plans


def latency_source_of(cfg: JobConfig) -> Callable[[], object] | None:
    """The latency gate's source for the job: vCenter's performance counters, or none."""
    if cfg.source != "vsphere" or cfg.vcenter is None:
        return None
    from pipeline.engine.vsphere_plans import VcenterLatency, endpoint_of

    return VcenterLatency(endpoint_of(cfg.vcenter))
