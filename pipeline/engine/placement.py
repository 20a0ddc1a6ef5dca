"""Proxies as Ray nodes: how a proxy advertises task slots and how a disk task asks for one.

A proxy node starts with the Ray custom resources ``{"proxy": 1, "backup_slots": N}``. A disk
task asks for one ``backup_slots`` plus the CPU and memory one task needs, so Ray itself never
runs more disk tasks on a proxy than it has slots, and never runs one on a node without slots
(the head, for instance). The limits that need a global view (snapshots per host, reads per
datastore, latency) live in the admission actor; see ``admission.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import psutil

from pipeline.errors import ConfigError

GiB = 1024**3

SLOT_RESOURCE = "backup_slots"
PROXY_RESOURCE = "proxy"

# VMware's NBD/NFC connection budget per ESXi host; more connections fail rather than queue.
VMWARE_MAX_NFC_DISKS_PER_HOST = 50


class PlacementError(ConfigError):
    """Placement limits or proxy sizing that cannot work."""


@dataclass(frozen=True)
class PlacementLimits:
    """Everything admission and placement need to know; built from the job's ``placement`` section."""

    slots_per_proxy: int | None = None
    cpus_per_task: float = 1.0
    memory_per_task_bytes: int = 2 * GiB
    max_snapshots_per_host: int = 4
    max_snapshots_per_datastore: int = 4
    max_reads_per_datastore: int = 8
    max_disks_per_host: int = VMWARE_MAX_NFC_DISKS_PER_HOST
    latency_stop_ms: float = 20.0
    latency_slow_ms: float = 30.0
    adaptive: bool = False

    def __post_init__(self) -> None:
        counts = {
            "max_snapshots_per_host": self.max_snapshots_per_host,
            "max_snapshots_per_datastore": self.max_snapshots_per_datastore,
            "max_reads_per_datastore": self.max_reads_per_datastore,
            "max_disks_per_host": self.max_disks_per_host,
        }
        for name, value in counts.items():
            if value < 1:
                raise PlacementError(f"placement.{name} is {value}", "it must be at least 1")
        if self.slots_per_proxy is not None and self.slots_per_proxy < 1:
            raise PlacementError(
                f"placement.slots_per_proxy is {self.slots_per_proxy}",
                "use at least 1, or leave it out to size slots from the proxy's cores and RAM",
            )
        if self.cpus_per_task <= 0 or self.memory_per_task_bytes <= 0:
            raise PlacementError(
                "placement.cpus_per_task and memory_per_task must be positive",
                "the classic rule is 1 core and 2 GiB per task",
            )
        if self.latency_stop_ms <= 0 or self.latency_slow_ms < self.latency_stop_ms:
            raise PlacementError(
                f"latency thresholds stop={self.latency_stop_ms} ms, slow={self.latency_slow_ms} ms",
                "stop must be positive and slow at least stop (industry defaults: 20 and 30 ms)",
            )
        if self.max_disks_per_host > VMWARE_MAX_NFC_DISKS_PER_HOST:
            raise PlacementError(
                f"placement.max_disks_per_host is {self.max_disks_per_host}",
                f"ESXi refuses NFC connections beyond about {VMWARE_MAX_NFC_DISKS_PER_HOST} per host",
            )


def default_slots(
    cores: float, ram_gib: float, cores_per_task: float = 1, ram_gib_per_task: float = 2
) -> int:
    """Task slots of a proxy by the classic rule: one task per core, and RAM enough for each task."""
    if cores <= 0 or ram_gib <= 0 or cores_per_task <= 0 or ram_gib_per_task <= 0:
        raise PlacementError(
            f"cannot size a proxy of {cores} cores and {ram_gib} GiB "
            f"at {cores_per_task} cores and {ram_gib_per_task} GiB per task",
            "all four figures must be positive",
        )
    slots = int(min(cores // cores_per_task, ram_gib // ram_gib_per_task))
    if slots < 1:
        raise PlacementError(
            f"a proxy of {cores} cores and {ram_gib} GiB has room for no task",
            f"one task needs {cores_per_task} cores and {ram_gib_per_task} GiB",
        )
    return slots


def proxy_resources(slots: int) -> dict[str, float]:
    """The custom resources a proxy node advertises (``ray start --resources=...``)."""
    if slots < 1:
        raise PlacementError(f"a proxy with {slots} slots", "give every proxy at least one slot")
    return {PROXY_RESOURCE: 1, SLOT_RESOURCE: slots}


def slots_for(limits: PlacementLimits, cores: float, ram_gib: float) -> int:
    """The proxy's slots: the configured figure, else the classic rule from its cores and RAM."""
    if limits.slots_per_proxy is not None:
        return limits.slots_per_proxy
    return default_slots(cores, ram_gib, limits.cpus_per_task, limits.memory_per_task_bytes / GiB)


def local_node_resources(
    limits: PlacementLimits | None = None, cores: float | None = None, ram_gib: float | None = None
) -> dict[str, float]:
    """Resources for ``ray.init(resources=...)`` so a single machine is its own proxy.

    Cores and RAM default to this machine's; a machine too small for the classic rule still gets
    one slot, because a laptop demo must run.
    """
    limits = limits or PlacementLimits()
    cores = cores if cores is not None else float(os.cpu_count() or 1)
    ram_gib = ram_gib if ram_gib is not None else psutil.virtual_memory().total / GiB
    try:
        slots = slots_for(limits, cores, ram_gib)
    except PlacementError:
        slots = 1
    return proxy_resources(slots)


def disk_task_options(limits: PlacementLimits) -> dict[str, Any]:
    """``.options(...)`` for a disk task or actor: one slot, and the task's CPU and memory."""
    return {
        "resources": {SLOT_RESOURCE: 1},
        "num_cpus": limits.cpus_per_task,
        "memory": limits.memory_per_task_bytes,
    }
