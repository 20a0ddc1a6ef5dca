"""Datastore latency and host CPU through PerformanceManager.QueryPerf (scripted in the harness)."""

from __future__ import annotations

import pytest

from pipeline.vsphere.perf import LatencySource, VcenterPerf

pytestmark = pytest.mark.integration


def test_datastore_latency_follows_what_the_harness_scripts(vcsim, vsphere_conn):
    perf = VcenterPerf(vsphere_conn)
    assert isinstance(perf, LatencySource)
    vcsim.set_latency("LocalDS_0", 35)
    vcsim.set_latency("LocalDS_1", 4)
    assert perf.datastore_latency_ms() == {"LocalDS_0": 35.0, "LocalDS_1": 4.0}
    vcsim.set_latency("LocalDS_0", 12)
    assert perf.datastore_latency_ms()["LocalDS_0"] == 12.0


def test_one_sample_is_one_soap_call_for_all_hosts(vcsim, vsphere_conn):
    perf = VcenterPerf(vsphere_conn)
    before = vsphere_conn.round_trips
    perf.sample()
    assert vsphere_conn.round_trips == before + 1


def test_host_cpu_is_reported_in_percent(vcsim, vsphere_conn):
    perf = VcenterPerf(vsphere_conn)
    vcsim.set_host_cpu("DC0_C0_H1", 73.5)
    cpu = perf.host_cpu_percent()
    assert cpu["DC0_C0_H1"] == 73.5
    assert set(cpu) == {"DC0_C0_H0", "DC0_C0_H1", "DC0_C0_H2"}
