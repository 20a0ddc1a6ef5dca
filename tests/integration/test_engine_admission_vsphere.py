"""Admission in a real backup run against the simulator: host and datastore caps hold, and a
datastore whose latency (vCenter's performance counters) climbs gets no new reads until it falls."""

from __future__ import annotations

import random
import threading
import time

import pytest

from pipeline.config import parse_config
from pipeline.engine.backup import new_run_id, run_backup
from pipeline.engine.plans import latency_source_of, open_plans
from pipeline.store.backend import open_store
from pipeline.store.repository import Repository
from tests.integration.sched_checks import max_overlap_by_resource

pytestmark = pytest.mark.integration
MiB = 1 << 20


@pytest.fixture(scope="module")
def sim(vcsim_factory):  # noqa: ANN201
    sim = vcsim_factory(hosts=1, datastores=1, vms=4, disk_mb=16, cbt_page_bytes=4 * MiB)
    rng = random.Random(9)
    for name in sim.vm_names():
        sim.write_disk_many(name, 0, [(o * MiB, rng.randbytes(MiB)) for o in range(0, 12, 4)])
    return sim


@pytest.fixture
def cfg(sim, tmp_path, monkeypatch):  # noqa: ANN201
    monkeypatch.setenv("VMPUMP_TEST_VC_PW", sim.password)
    url = f"file://{tmp_path}/repo"
    Repository.init(open_store(url))
    return parse_config(f"""
name: adm
vcenter: {{host: "{sim.host}", port: {sim.port}, user: {sim.user}, password_env: VMPUMP_TEST_VC_PW, protocol: http}}
repository: {{url: "{url}"}}
placement:
  cpus_per_task: 0.5
  memory_per_task: 64MiB
  max_snapshots_per_host: 1
  max_reads_per_datastore: 1
  latency_stop_ms: 20
  latency_slow_ms: 30
""")


def _backup(cfg, poll_s: float = 20.0):  # noqa: ANN001, ANN202
    repo = Repository.open(open_store(cfg.repository.url))
    run_id = new_run_id()
    with open_plans(cfg, repo, run_id) as plans:
        return run_backup(
            cfg, plans, run_id=run_id, latency_source=latency_source_of(cfg), latency_poll_s=poll_s
        )


def test_snapshot_and_read_caps_are_never_exceeded(ray_local, sim, cfg):
    sim.set_latency(next(iter(sim.datastore_dirs)), 1)
    summary = _backup(cfg)
    assert not summary.failed, [o.error for o in summary.failed]
    assert len(summary.outcomes) == 4
    peaks = max_overlap_by_resource(summary.grants)
    assert peaks[("snapshots on host", summary.grants[0].host)] == 1
    assert max(v for (kind, _), v in peaks.items() if kind == "reads on datastore") == 1


def test_a_datastore_over_the_latency_threshold_gets_no_new_reads_until_it_recovers(ray_local, sim, cfg):
    datastore = next(iter(sim.datastore_dirs))
    sim.set_latency(datastore, 80)
    result: dict = {}
    runner = threading.Thread(target=lambda: result.setdefault("summary", _backup(cfg, poll_s=0.5)))
    runner.start()
    time.sleep(6)
    assert runner.is_alive(), "the backup ran although the datastore was over the latency threshold"
    sim.set_latency(datastore, 2)
    runner.join(120)
    summary = result["summary"]
    assert not summary.failed, [o.error for o in summary.failed]
    actions = [(d.datastore, d.action) for d in summary.latency_decisions]
    assert (datastore, "stop") in actions and (datastore, "go") in actions
    stop = next(d for d in summary.latency_decisions if d.action == "stop")
    first_read = min(g.at for g in summary.grants if g.kind == "read" and g.event == "grant")
    go = next(d for d in summary.latency_decisions if d.action == "go")
    assert stop.reason and first_read >= go.at - 0.1
