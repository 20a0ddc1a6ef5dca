"""The window planner's simulated night against a real local run of the same small estate."""

from __future__ import annotations

import pytest

from pipeline.config import parse_config
from pipeline.engine.backup import placement_limits, run_backup
from pipeline.engine.plans import synthetic_plans
from pipeline.ops.estate import DiskSpec, Estate, VmSpec
from pipeline.ops.window import simulate_night
from pipeline.store.backend import open_store
from pipeline.store.repository import Repository

pytestmark = pytest.mark.integration
MiB = 1 << 20


def _job(url: str, vms: int):  # noqa: ANN202
    disks = "".join(f"\n  - {{vm: vm{i}, size: 48MiB, seed: {i}, zero_share: 0.0}}" for i in range(vms))
    return parse_config(f"""
name: sim
source: synthetic
repository: {{url: "{url}"}}
placement: {{slots_per_proxy: 2, cpus_per_task: 0.5, memory_per_task: 64MiB}}
synthetic:{disks}
""")


def test_the_simulated_night_matches_a_real_run_in_order_of_magnitude(ray_local, tmp_path):
    # calibrate a task's speed on this proxy under full load (both slots busy), as admins measure
    url = f"file://{tmp_path}/calibration"
    Repository.init(open_store(url))
    two = _job(url, 2)
    loaded = run_backup(two, synthetic_plans(two, Repository.open(open_store(url))))
    disks = [d for o in loaded.outcomes for d in o.disks]
    task_mib_s = sum(d.capacity / MiB / d.wall_s for d in disks) / len(disks)

    url = f"file://{tmp_path}/night"
    Repository.init(open_store(url))
    cfg = _job(url, 6)
    night = run_backup(cfg, synthetic_plans(cfg, Repository.open(open_store(url))))
    assert not night.failed
    estate = Estate(
        tuple(VmSpec(f"vm{i}", "local", (DiskSpec(48 * MiB, "local"),), 0.05) for i in range(6)), {}
    )
    predicted = simulate_night(
        estate,
        1,
        placement_limits(cfg.placement),
        task_mib_s=task_mib_s,
        snapshot_create_s=0,
        snapshot_remove_s=0,
    )
    assert predicted.slots == 2
    ratio = night.wall_s / predicted.window_s
    print(f"real night {night.wall_s:.2f}s, simulated {predicted.window_s:.2f}s, ratio {ratio:.2f}")
    assert 1 / 3 <= ratio <= 3, (night.wall_s, predicted.window_s)
