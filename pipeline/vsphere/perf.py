"""Datastore latency and host CPU from vCenter's PerformanceManager (real-time, 20 s samples).

The scheduler's latency gate consumes the ``LatencySource`` protocol; ``VcenterPerf`` is the
vCenter implementation. Datastore counters are per host with the datastore's UUID as instance; a
datastore's latency is the worst any host sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from pyVmomi import vim

from pipeline.vsphere.connection import Connection, VsphereError
from pipeline.vsphere.inventory import DatastoreInfo, HostInfo, list_datastores, list_hosts

READ_LATENCY = "datastore.totalReadLatency.average"  # ms
HOST_CPU = "cpu.usage.average"  # 1/100 percent
REALTIME_INTERVAL_S = 20


@runtime_checkable
class LatencySource(Protocol):
    def datastore_latency_ms(self) -> dict[str, float]:
        """Latest read latency per datastore name, in milliseconds."""
        ...


@dataclass(frozen=True)
class PerfSample:
    datastore_read_ms: dict[str, float]
    host_cpu_percent: dict[str, float]


class VcenterPerf:
    """Reads the latest real-time samples for every host in one ``QueryPerf`` call."""

    def __init__(self, conn: Connection, counter: str = READ_LATENCY) -> None:
        self._conn = conn
        ids = _counter_ids(conn)
        if counter not in ids:
            raise VsphereError(
                f"vCenter has no performance counter {counter}",
                "raise the statistics level of the real-time interval, or disable the latency gate",
            )
        self._latency_id = ids[counter]
        self._cpu_id = ids.get(HOST_CPU)
        datastores = list_datastores(conn)
        self._hosts: list[HostInfo] = list_hosts(conn, datastores)
        self._ds_by_instance = _instances(datastores)

    def sample(self) -> PerfSample:
        metric = vim.PerformanceManager.MetricId
        ids = [metric(counterId=self._latency_id, instance="*")]
        if self._cpu_id is not None:
            ids.append(metric(counterId=self._cpu_id, instance=""))
        specs = [
            vim.PerformanceManager.QuerySpec(
                entity=vim.HostSystem(h.moref, self._conn.stub),
                metricId=ids,
                intervalId=REALTIME_INTERVAL_S,
                maxSample=1,
            )
            for h in self._hosts
        ]
        host_name = {h.moref: h.name for h in self._hosts}
        latency: dict[str, float] = {}
        cpu: dict[str, float] = {}
        results = self._conn.content.perfManager.QueryPerf(querySpec=specs) if specs else []
        for entity_metric in results or []:
            host = host_name.get(entity_metric.entity._moId, entity_metric.entity._moId)
            for series in entity_metric.value or []:
                if not series.value:
                    continue
                latest = float(series.value[-1])
                if series.id.counterId == self._latency_id:
                    ds = self._ds_by_instance.get(series.id.instance, series.id.instance)
                    latency[ds] = max(latency.get(ds, 0.0), latest)
                elif series.id.counterId == self._cpu_id and not series.id.instance:
                    cpu[host] = latest / 100.0
        return PerfSample(latency, cpu)

    def datastore_latency_ms(self) -> dict[str, float]:
        return self.sample().datastore_read_ms

    def host_cpu_percent(self) -> dict[str, float]:
        return self.sample().host_cpu_percent


def _counter_ids(conn: Connection) -> dict[str, int]:
    out = {}
    for c in conn.content.perfManager.perfCounter:
        out[f"{c.groupInfo.key}.{c.nameInfo.key}.{c.rollupType}"] = c.key
    return out


def _instances(datastores: list[DatastoreInfo]) -> dict[str, str]:
    """Perf instance → datastore name: the UUID ending a datastore's URL, and the name itself."""
    out = {}
    for ds in datastores:
        out[ds.url.rstrip("/").rsplit("/", 1)[-1]] = ds.name
        out[ds.name] = ds.name
    return out
