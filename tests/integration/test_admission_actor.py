import asyncio
import random
import time

import pytest
import ray

from pipeline.engine.admission import admitted_read, admitted_vm, start_admission
from pipeline.engine.latency import ScriptedLatencySource
from pipeline.engine.placement import PlacementLimits
from tests.integration.sched_checks import max_overlap_by_resource

pytestmark = pytest.mark.integration


def wait_until(predicate, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def back_up_vm(adm, vm_id, host, disk_datastores, rng):
    datastores = sorted(set(disk_datastores))
    async with admitted_vm(adm, vm_id, host, datastores, disk_datastores[0]) as vm:

        async def disk(i, ds):
            async with admitted_read(adm, vm_id, host, ds, grant=vm.read if i == 0 else None):
                await asyncio.sleep(rng.uniform(0.01, 0.05))

        await asyncio.gather(*(disk(i, ds) for i, ds in enumerate(disk_datastores)))


def test_host_and_datastore_caps_hold_under_many_concurrent_callers(ray_local):
    limits = PlacementLimits(
        max_snapshots_per_host=2,
        max_snapshots_per_datastore=3,
        max_reads_per_datastore=2,
        max_disks_per_host=3,
    )
    adm = start_admission(limits, total_slots=5)
    rng = random.Random(7)
    hosts, datastores = ["esx1", "esx2", "esx3"], ["ds1", "ds2", "ds3", "ds4"]
    vms = [
        (f"vm{i}", rng.choice(hosts), [rng.choice(datastores) for _ in range(rng.randint(1, 3))])
        for i in range(30)
    ]

    async def night():
        await asyncio.gather(*(back_up_vm(adm, vm, host, disks, rng) for vm, host, disks in vms))

    asyncio.run(night())
    log = ray.get(adm.grants_log.remote())
    peak = max_overlap_by_resource(log)
    for host in hosts:
        assert peak.get(("snapshots on host", host), 0) == 2  # reached, never exceeded
        assert peak.get(("reads on host", host), 0) <= 3
    for ds in datastores:
        assert peak.get(("snapshots on datastore", ds), 0) <= 3
        assert peak.get(("reads on datastore", ds), 0) <= 2
    assert sum(e.event == "grant" for e in log) == sum(e.event == "release" for e in log)
    assert sum(e.event == "grant" and e.kind == "read" for e in log) == sum(len(d) for _, _, d in vms)
    assert ray.get(adm.usage.remote()) == {}
    assert any("waiting for" in e.reason for e in log)  # there was contention to resolve


def test_a_datastore_over_the_latency_threshold_gets_no_grants_until_it_recovers(ray_local, tmp_path):
    source = ScriptedLatencySource(tmp_path / "latency.json")
    source.set({"ds1": 5, "ds2": 5})
    adm = start_admission(PlacementLimits(), source, poll_interval_s=0.1, total_slots=8)
    decisions = lambda: ray.get(adm.decisions_log.remote())  # noqa: E731

    source.set({"ds1": 45, "ds2": 5})
    wait_until(lambda: [d.action for d in decisions()] == ["stop", "slow"])
    assert ray.get(adm.reader_delay_s.remote("ds1")) > 0
    assert ray.get(adm.reader_delay_s.remote("ds2")) == 0

    blocked = adm.admit_read.remote("vm1", "esx1", "ds1")
    assert ray.get(adm.admit_read.remote("vm2", "esx1", "ds2"), timeout=5)
    ready, _ = ray.wait([blocked], timeout=0.8)
    assert not ready

    source.set({"ds1": 8, "ds2": 5})
    grant = ray.get(blocked, timeout=5)
    assert grant.startswith("r-")
    assert [d.action for d in decisions()] == ["stop", "slow", "go", "unslow"]
    log = ray.get(adm.grants_log.remote())
    assert "stopped by latency" in [e for e in log if e.grant_id == grant][0].reason


def test_adaptive_mode_shrinks_the_read_limit_under_latency_and_grows_it_back(ray_local, tmp_path):
    source = ScriptedLatencySource(tmp_path / "latency.json")
    limits = PlacementLimits(max_reads_per_datastore=4, adaptive=True, latency_stop_ms=20, latency_slow_ms=60)
    adm = start_admission(limits, source, poll_interval_s=0.1, total_slots=8, latency_target_ms=10)
    limit = lambda: ray.get(adm.read_limit.remote("ds1"))  # noqa: E731

    source.set({"ds1": 15})  # above the AIMD target, below the stop threshold
    wait_until(lambda: limit() == 1)
    first = ray.get(adm.admit_read.remote("vm1", "esx1", "ds1"))
    second = adm.admit_read.remote("vm2", "esx1", "ds1")
    assert not ray.wait([second], timeout=0.5)[0]  # the shrunk limit holds
    ray.get(adm.release_read.remote(first))
    ray.get(adm.release_read.remote(ray.get(second, timeout=5)))

    source.set({"ds1": 3})
    wait_until(lambda: limit() == 4)
    actions = [d.action for d in ray.get(adm.decisions_log.remote())]
    assert actions == ["shrink", "shrink", "grow", "grow", "grow"]


def test_a_grant_whose_holder_died_expires_and_goes_to_the_next_waiter(ray_local):
    adm = start_admission(PlacementLimits(max_reads_per_datastore=1), total_slots=4, lease_s=0.6)
    ray.get(adm.admit_read.remote("dead-vm", "esx1", "ds1"))  # never renewed, never released
    started = time.monotonic()
    ray.get(adm.admit_read.remote("vm2", "esx1", "ds1"), timeout=10)
    assert time.monotonic() - started >= 0.4
    assert any(e.event == "expire" for e in ray.get(adm.grants_log.remote()))


@ray.remote(num_cpus=0.25)
def back_up_vm_in_a_task(adm, vm_id: str) -> None:
    from pipeline.engine.admission import admitted_read_sync, admitted_vm_sync

    with admitted_vm_sync(adm, vm_id, "esx1", ["ds1"], "ds1", renew_s=0.1) as vm:
        with admitted_read_sync(adm, vm_id, "esx1", "ds1", grant=vm.read, renew_s=0.1):
            time.sleep(0.8)  # longer than the lease: only renewals keep the grants


def test_blocking_callers_keep_their_leases_alive_and_respect_the_caps(ray_local):
    adm = start_admission(PlacementLimits(max_snapshots_per_host=1), total_slots=4, lease_s=0.5)
    ray.get([back_up_vm_in_a_task.remote(adm, f"vm{i}") for i in range(3)])
    log = ray.get(adm.grants_log.remote())
    assert not [e for e in log if e.event == "expire"]
    assert max_overlap_by_resource(log)[("snapshots on host", "esx1")] == 1
    assert sum(e.event == "grant" for e in log) == 6
