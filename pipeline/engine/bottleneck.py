"""Which stage held the night back, and what to buy about it.

Every stage measures the seconds it was busy; divided by the worker-seconds available (wall time
times workers) that gives each stage's share. The busiest group is the bottleneck. Stages in one
worker overlap in threads, so shares can add up to more than 100%: each share is read on its own.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from rich.table import Table

from pipeline.errors import VmpumpError

STAGES = ("source_read", "hash", "compress", "dedup", "target_write", "admission_wait")

# Stage -> the resource it spends. Hashing, compressing and dedup lookups burn proxy CPU.
RESOURCE_OF_STAGE = {
    "source_read": "source",
    "hash": "proxy CPU",
    "compress": "proxy CPU",
    "dedup": "proxy CPU",
    "target_write": "network/target",
    "admission_wait": "admission/scheduling",
}

SATURATED = 0.80  # a resource busier than this is the bottleneck worth naming
HEADROOM = 0.70  # size additions so the bottleneck lands here, leaving room for a bad night


class BottleneckInputError(VmpumpError):
    """Stage statistics that cannot describe a run."""


@dataclass(frozen=True)
class StageShare:
    stage: str
    resource: str
    busy_s: float
    share: float  # busy_s / (wall_s * workers)
    bytes: int
    mib_per_s: float  # bytes over busy seconds: the stage's own speed


@dataclass(frozen=True)
class BottleneckReport:
    wall_s: float
    workers: int
    stages: tuple[StageShare, ...]
    resource_shares: tuple[tuple[str, float], ...]  # busiest first
    bottleneck: str  # a resource name, or "none"
    advice: str


def analyze_bottleneck(
    busy_s: Mapping[str, float],
    bytes_by_stage: Mapping[str, int],
    wall_s: float,
    workers: int,
    *,
    cores_per_proxy: int = 8,
) -> BottleneckReport:
    """Shares per stage and resource, the bottleneck, and one line of sizing advice.

    ``workers`` is the number of concurrent disk tasks (proxy slots in use, one core each by the
    classic rule); ``cores_per_proxy`` sizes the advice ("add 2 proxies of 8 cores").
    """
    unknown = set(busy_s) - set(STAGES)
    if unknown:
        raise BottleneckInputError(f"unknown stages {sorted(unknown)}", f"stages are {', '.join(STAGES)}")
    if wall_s <= 0 or workers < 1:
        raise BottleneckInputError(
            f"wall time {wall_s} s with {workers} workers", "a run lasts some time and has a worker"
        )
    capacity = wall_s * workers
    stages = tuple(
        StageShare(
            stage=s,
            resource=RESOURCE_OF_STAGE[s],
            busy_s=busy_s.get(s, 0.0),
            share=busy_s.get(s, 0.0) / capacity,
            bytes=bytes_by_stage.get(s, 0),
            mib_per_s=bytes_by_stage.get(s, 0) / 2**20 / busy_s[s] if busy_s.get(s) else 0.0,
        )
        for s in STAGES
    )
    by_resource: dict[str, float] = {}
    for st in stages:
        by_resource[st.resource] = by_resource.get(st.resource, 0.0) + st.share
    ranked = tuple(sorted(by_resource.items(), key=lambda kv: -kv[1]))
    top, top_share = ranked[0]
    bottleneck = top if top_share >= SATURATED else "none"
    return BottleneckReport(
        wall_s,
        workers,
        stages,
        ranked,
        bottleneck,
        _advice(bottleneck, top, top_share, workers, cores_per_proxy),
    )


def _advice(bottleneck: str, top: str, share: float, workers: int, cores_per_proxy: int) -> str:
    pct = f"{share:.0%}"
    if bottleneck == "proxy CPU":
        needed = workers * share / HEADROOM
        proxies = max(1, math.ceil((needed - workers) / cores_per_proxy))
        noun = "proxy" if proxies == 1 else "proxies"
        return f"proxy CPU {pct} busy: add {proxies} {noun} of {cores_per_proxy} cores"
    if bottleneck == "source":
        return (
            f"source reads {pct} busy: the datastores or the transport limit the run; raise "
            "max_reads_per_datastore if latency allows, or use a faster transport (hot-add, direct SAN/NFS)"
        )
    if bottleneck == "network/target":
        return (
            f"target writes {pct} busy: the network or the object store limit the run; more bandwidth "
            "to the repository or more S3 endpoints, not more proxies"
        )
    if bottleneck == "admission/scheduling":
        return (
            f"tasks waited for admission {pct} of the time: snapshot or read caps are tight, or datastores "
            "sat above the latency threshold; see the decisions log before raising caps"
        )
    return f"no resource saturated (busiest: {top} {pct}): the run is underfed; back up more VMs in parallel"


def render_bottleneck(report: BottleneckReport) -> Table:
    table = Table(title=f"Where the time went ({report.workers} workers, {report.wall_s:.1f} s wall)")
    table.add_column("stage")
    table.add_column("resource")
    table.add_column("busy s", justify="right")
    table.add_column("share", justify="right")
    table.add_column("MiB/s", justify="right")
    for st in report.stages:
        table.add_row(st.stage, st.resource, f"{st.busy_s:.1f}", f"{st.share:.0%}", f"{st.mib_per_s:.0f}")
    table.caption = f"bottleneck: {report.bottleneck} — {report.advice}"
    return table
