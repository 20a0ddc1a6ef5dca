"""Placement on a real multi-node Ray cluster: a head with no slots and proxies of 1, 2, 3 slots."""

import asyncio
import time
from collections import defaultdict

import pytest
import ray

from pipeline.engine.admission import ReadThrottle, admitted_read, admitted_vm, start_admission
from pipeline.engine.placement import PlacementLimits, disk_task_options
from tests.integration.sched_checks import max_overlap_by_resource, max_overlap_of_intervals

pytestmark = pytest.mark.integration

MiB = 1024**2
LIMITS = PlacementLimits(
    cpus_per_task=0.25,  # so slots, not the one CPU per node, bound concurrency
    memory_per_task_bytes=32 * MiB,
    max_snapshots_per_host=2,
    max_reads_per_datastore=3,
)


@ray.remote
def read_disk(seconds: float, admission=None, datastore: str = "") -> tuple[str, float, float]:
    start = time.time()
    throttle = ReadThrottle(admission, datastore) if admission is not None else None
    for _ in range(3):  # three "reads", pausing between them as a real reader does
        time.sleep(seconds / 3)
        if throttle is not None:
            throttle.pause()
    return ray.get_runtime_context().get_node_id(), start, time.time()


def check_runs(runs, proxy_cluster):
    by_node = defaultdict(list)
    for node_id, start, end in runs:
        by_node[node_id].append((start, end))
    assert set(by_node) <= set(proxy_cluster.proxy_slots)  # never on the head
    for node_id, intervals in by_node.items():
        assert max_overlap_of_intervals(intervals) <= proxy_cluster.proxy_slots[node_id]
    return by_node


def test_disk_tasks_run_only_on_proxies_and_never_above_their_slots(ray_cluster):
    options = disk_task_options(LIMITS)
    runs = ray.get([read_disk.options(**options).remote(0.3) for _ in range(18)])
    by_node = check_runs(runs, ray_cluster)
    assert len(by_node) == 3  # every proxy took work
    all_intervals = [iv for ivs in by_node.values() for iv in ivs]
    assert max_overlap_of_intervals(all_intervals) >= 4  # and they ran side by side


def test_a_night_of_vms_respects_admission_caps_and_proxy_slots(ray_cluster):
    adm = start_admission(LIMITS)  # follows the cluster's slots: 1 + 2 + 3
    options = disk_task_options(LIMITS)
    vms = [(f"vm{i}", f"esx{i % 2}", [f"ds{i % 3}", f"ds{(i + 1) % 3}"][: 1 + i % 2]) for i in range(10)]
    runs = []

    async def back_up(vm_id, host, disks):
        async with admitted_vm(adm, vm_id, host, sorted(set(disks)), disks[0]) as vm:

            async def disk(i, ds):
                async with admitted_read(adm, vm_id, host, ds, grant=vm.read if i == 0 else None):
                    runs.append(await read_disk.options(**options).remote(0.15, adm, ds))

            await asyncio.gather(*(disk(i, ds) for i, ds in enumerate(disks)))

    async def night():
        await asyncio.gather(*(back_up(*vm) for vm in vms))

    asyncio.run(night())
    check_runs(runs, ray_cluster)
    assert len(runs) == sum(len(d) for _, _, d in vms)
    peak = max_overlap_by_resource(ray.get(adm.grants_log.remote()))
    assert max(v for (kind, _), v in peak.items() if kind == "snapshots on host") == 2
    assert max(v for (kind, _), v in peak.items() if kind == "reads on datastore") <= 3
    grants = ray.get(adm.grants_log.remote())
    live = peak_reads = 0
    for e in grants:
        if e.kind == "read":
            live += 1 if e.event == "grant" else -1
            peak_reads = max(peak_reads, live)
    assert peak_reads <= 6  # the cluster's proxy slots
