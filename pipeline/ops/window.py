"""The backup window planner: how many proxies an estate needs, and how the night would go.

Two answers, as a backup admin would give them:
- the classic sizing formula: T = MiB/s needed to move the estate within the window; cores = T/100
  for a full, T·CR/25 for an incremental (changed blocks are read at random, so a core moves four
  times less); one task per core and 2 GiB RAM per task;
- a discrete-event simulation of the night that runs the production admission ledger
  (``AdmissionBook``: snapshots per host and datastore, reads per datastore, disks per host, proxy
  slots) with per-task speed and per-datastore throughput, to predict the window and name the
  resource that runs out first. No Ray: a heap of timers and a fluid model of the reads.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from rich.console import Group
from rich.table import Table

from pipeline.engine.admission_book import AdmissionBook, VmGrant
from pipeline.engine.latency import LatencyGate
from pipeline.engine.placement import PlacementLimits
from pipeline.errors import UsageError
from pipeline.ops.estate import Estate, MiB

# The classic rule's per-core speeds: a core moves 100 MiB/s of a full, 25 MiB/s of changed blocks.
FULL_MIB_S_PER_CORE = 100.0
INCREMENTAL_MIB_S_PER_CORE = 25.0
RAM_GIB_PER_TASK = 2.0


class WindowError(UsageError):
    """A window or fleet that cannot be planned."""


@dataclass(frozen=True)
class Sizing:
    mode: str  # "full" or "incremental"
    moved_bytes: float
    throughput_mib_s: float  # T (full) or T·CR (incremental): what must move per second
    cores: float
    tasks: int
    ram_gib: float
    proxies: int


@dataclass(frozen=True)
class SimResult:
    mode: str
    proxies: int
    slots: int
    window_s: float
    moved_bytes: float
    first_exhausted: str  # the resource kind that first held a VM or disk back, or "none"
    first_exhausted_at_s: float
    waiting_s_by_resource: tuple[tuple[str, float], ...]  # waiter-seconds, largest first
    peak_usage: dict[str, int]  # the most ever in use at once, per resource kind
    slot_utilization: float
    datastore_bound_s: float  # read-seconds slowed by a datastore's throughput
    longest_disk_s: float  # the largest disk alone at one task's speed: no fleet beats it
    label: str = ""  # what this night is, for the report

    @property
    def window_h(self) -> float:
        return self.window_s / 3600


@dataclass(frozen=True)
class WindowPlan:
    window_h: float
    vms: int
    disks: int
    hosts: int
    datastores: int
    total_bytes: int
    changed_bytes: float
    full: Sizing
    incremental: Sizing
    simulations: tuple[SimResult, ...] = field(default=())


def parse_window_hours(text: str | float) -> float:
    """``"8h"``, ``"90m"``, ``"1.5h"`` or a plain number of hours."""
    if isinstance(text, (int, float)):
        hours = float(text)
    else:
        raw = text.strip().lower()
        try:
            if raw.endswith("h"):
                hours = float(raw[:-1])
            elif raw.endswith("m"):
                hours = float(raw[:-1]) / 60
            else:
                hours = float(raw)
        except ValueError as e:
            raise WindowError(f"backup window {text!r} is not a duration", "write it like 8h or 90m") from e
    if not 0 < hours <= 24 * 7:
        raise WindowError(f"backup window of {hours:g} h", "give a window between a minute and a week")
    return hours


def classic_sizing(
    moved_bytes: float, window_s: float, mode: str, cores_per_proxy: int, change_rate: float = 1.0
) -> Sizing:
    """The formula alone; for an incremental pass the *total* bytes and the change rate."""
    if window_s <= 0 or cores_per_proxy < 1:
        raise WindowError(f"window {window_s} s with {cores_per_proxy}-core proxies", "both must be positive")
    t_mib_s = moved_bytes / MiB / window_s
    if mode == "full":
        cores = t_mib_s / FULL_MIB_S_PER_CORE
        throughput = t_mib_s
    else:
        throughput = t_mib_s * change_rate
        cores = throughput / INCREMENTAL_MIB_S_PER_CORE
    tasks = max(1, math.ceil(cores - 1e-9))
    moved = moved_bytes if mode == "full" else moved_bytes * change_rate
    return Sizing(
        mode, moved, throughput, cores, tasks, tasks * RAM_GIB_PER_TASK, math.ceil(tasks / cores_per_proxy)
    )


def plan_window(
    estate: Estate,
    window_hours: float,
    *,
    limits: PlacementLimits | None = None,
    cores_per_proxy: int = 16,
    simulate: bool = True,
) -> WindowPlan:
    """Formula for full and incremental; then simulate both on the formula's fleets, and the first
    full on the incremental fleet (what the first night, or a CBT reset, costs)."""
    if window_hours <= 0:
        raise WindowError(f"backup window of {window_hours} h", "give a window such as 8h")
    limits = limits or PlacementLimits()
    window_s = window_hours * 3600
    full = classic_sizing(estate.total_bytes, window_s, "full", cores_per_proxy)
    incr = classic_sizing(estate.total_bytes, window_s, "incremental", cores_per_proxy, estate.change_rate)
    sims: tuple[SimResult, ...] = ()
    if simulate:
        nights = (
            ("full", full.proxies, "full"),
            ("incremental", incr.proxies, "incremental"),
            ("first full, incremental fleet", incr.proxies, "full"),
        )
        sims = tuple(
            replace(
                simulate_night(estate, n, limits, cores_per_proxy=cores_per_proxy, mode=mode), label=label
            )
            for label, n, mode in nights
        )
    return WindowPlan(
        window_hours,
        len(estate.vms),
        estate.disk_count,
        len(estate.hosts),
        len(estate.datastores),
        estate.total_bytes,
        estate.changed_bytes,
        full,
        incr,
        sims,
    )


@dataclass
class _Read:
    vm: int
    disk: int
    datastore: str
    grant: str
    remaining: float  # bytes


def simulate_night(
    estate: Estate,
    proxies: int,
    limits: PlacementLimits,
    *,
    cores_per_proxy: int = 16,
    mode: str = "full",
    task_mib_s: float | None = None,
    snapshot_create_s: float = 20.0,
    snapshot_remove_s: float = 30.0,
    largest_first: bool = True,
) -> SimResult:
    """One night of the estate on ``proxies`` proxies under ``limits``; see the module docstring.

    Slots per proxy are ``limits.slots_per_proxy`` or one per core. VMs are offered largest
    first (the shortest night for a given fleet); at most twice the slots wait in admission at once,
    as an engine keeps a bounded number of VMs in flight.
    """
    if proxies < 1:
        raise WindowError(f"{proxies} proxies", "simulate at least one proxy")
    slots = proxies * (limits.slots_per_proxy or cores_per_proxy)
    speed = (task_mib_s or (FULL_MIB_S_PER_CORE if mode == "full" else INCREMENTAL_MIB_S_PER_CORE)) * MiB
    work = [
        [d.size_bytes * (1.0 if mode == "full" else vm.change_rate) for d in vm.disks] for vm in estate.vms
    ]
    order = (
        sorted(range(len(estate.vms)), key=lambda i: -sum(work[i]))
        if largest_first
        else list(range(len(work)))
    )
    gate = LatencyGate(limits.latency_stop_ms, limits.latency_slow_ms, limits.max_reads_per_datastore)
    clock = [0.0]
    book = AdmissionBook(limits, gate, total_slots=slots, lease_s=math.inf, clock=lambda: clock[0])

    offered = itertools.count()
    next_vm = 0
    in_book = 0
    tickets: dict[int, tuple[int, int]] = {}  # ticket -> (vm, disk)
    snapshot_of: dict[int, str] = {}
    first_read: dict[int, str] = {}
    disks_left = [len(vm.disks) for vm in estate.vms]
    reads: dict[str, _Read] = {}
    timers: list[tuple[float, int, str, int]] = []
    waiting_s: dict[str, float] = {}
    peak: dict[str, int] = {}
    first = ("none", 0.0)
    moved = slot_s = ds_bound_s = 0.0
    vms_done = 0

    def start(vm: int, disk: int, grant: str) -> None:
        reads[grant] = _Read(vm, disk, estate.vms[vm].disks[disk].datastore, grant, work[vm][disk])

    while vms_done < len(estate.vms):
        now = clock[0]
        while next_vm < len(order) and in_book < 2 * slots:  # keep the admission queue bounded
            vm = order[next_vm]
            spec = estate.vms[vm]
            datastores = sorted({d.datastore for d in spec.disks})
            tickets[book.request(spec.name, spec.host, datastores, spec.disks[0].datastore)] = (vm, 0)
            next_vm += 1
            in_book += 1
        for ticket, grant in book.dispatch():
            for grant_id in (grant.snapshot, grant.read) if isinstance(grant, VmGrant) else (grant,):
                for key in book.grants[grant_id].keys:
                    peak[key[0]] = max(peak.get(key[0], 0), book.usage[key])
            vm, disk = tickets.pop(ticket)
            if isinstance(grant, VmGrant):
                in_book -= 1
                snapshot_of[vm] = grant.snapshot
                # Disk 0's slot is held from here, through the snapshot, so no snapshot sits idle.
                first_read[vm] = grant.read
                heapq.heappush(timers, (now + snapshot_create_s, next(offered), "snapshot-ready", vm))
            else:
                start(vm, disk, grant)
        blocked = book.waiting_by_resource()
        if blocked and first[0] == "none":
            first = (max(blocked, key=lambda k: blocked[k]), now)

        rates = _rates(reads, speed, estate.datastore_mib_s)
        step = min((r.remaining / rates[g] for g, r in reads.items()), default=math.inf)
        if timers:
            step = min(step, timers[0][0] - now)
        if step == math.inf:
            raise WindowError("the simulation stalled with work left", "a cap of zero? check the limits")
        for g, r in reads.items():
            r.remaining -= rates[g] * step
            moved += rates[g] * step
            ds_bound_s += step if rates[g] < speed * 0.999 else 0.0
        for kind, n in blocked.items():
            waiting_s[kind] = waiting_s.get(kind, 0.0) + n * step
        slot_s += len(reads) * step
        clock[0] = now = now + step

        for g in [g for g, r in reads.items() if r.remaining <= 1e-6 * speed]:
            r = reads.pop(g)
            book.release(g, "read")
            disks_left[r.vm] -= 1
            if disks_left[r.vm] == 0:
                heapq.heappush(timers, (now + snapshot_remove_s, next(offered), "snapshot-removed", r.vm))
        while timers and timers[0][0] <= now + 1e-9:
            _, _, what, vm = heapq.heappop(timers)
            spec = estate.vms[vm]
            if what == "snapshot-ready":
                start(vm, 0, first_read.pop(vm))
                for disk in range(1, len(spec.disks)):
                    tickets[book.request(spec.name, spec.host, (), spec.disks[disk].datastore)] = (vm, disk)
            else:
                book.release(snapshot_of.pop(vm), "snapshot")
                vms_done += 1
    makespan = clock[0]
    return SimResult(
        mode=mode,
        proxies=proxies,
        slots=slots,
        window_s=makespan,
        moved_bytes=moved,
        first_exhausted=first[0],
        first_exhausted_at_s=first[1],
        waiting_s_by_resource=tuple(sorted(waiting_s.items(), key=lambda kv: -kv[1])),
        peak_usage=peak,
        slot_utilization=slot_s / (slots * makespan) if makespan else 0.0,
        datastore_bound_s=ds_bound_s,
        longest_disk_s=max(w for disks in work for w in disks) / speed,
    )


def _rates(reads: dict[str, _Read], speed: float, datastore_mib_s: Mapping[str, float]) -> dict[str, float]:
    """Bytes/s per read: the task's own speed, or a fair share of its datastore's throughput."""
    per_ds: dict[str, int] = {}
    for r in reads.values():
        per_ds[r.datastore] = per_ds.get(r.datastore, 0) + 1
    rates = {}
    for g, r in reads.items():
        cap = datastore_mib_s.get(r.datastore)
        rates[g] = speed if cap is None else min(speed, cap * MiB / per_ds[r.datastore])
    return rates


# Which placement setting loosens each admission resource.
_SETTING_OF_RESOURCE = {
    "snapshots on host": "max_snapshots_per_host",
    "snapshots on datastore": "max_snapshots_per_datastore",
    "reads on datastore": "max_reads_per_datastore",
    "disk reads on host": "max_disks_per_host",
}


def sim_advice(result: SimResult, window_h: float) -> str:
    """What to change so the night fits, read from where the simulated VMs waited."""
    if result.window_h <= window_h:
        return f"fits with {window_h - result.window_h:.1f} h to spare"
    if result.longest_disk_s / 3600 > window_h:
        return (
            f"the largest disk alone takes {result.longest_disk_s / 3600:.1f} h at one task's speed: "
            "no fleet fits it; back it up in its own window or use a faster transport"
        )
    most = result.waiting_s_by_resource[0][0] if result.waiting_s_by_resource else "proxy slots"
    if most == "proxy slots" or result.slot_utilization > 0.9:
        needed = math.ceil(result.proxies * result.window_h / window_h)
        return f"slots are the limit: about {needed} proxies ({needed - result.proxies} more)"
    setting = _SETTING_OF_RESOURCE.get(most, most)
    return f"VMs wait for {most}, not proxies: raise placement.{setting} if latency allows"


def _tib(n: float) -> str:
    return f"{n / 2**40:,.1f} TiB"


def render_window_plan(plan: WindowPlan) -> Group:
    head = Table(title=f"Backup window plan: {plan.window_h:g} h", show_header=False)
    head.add_row(
        "estate", f"{plan.vms:,} VMs, {plan.disks:,} disks, {plan.hosts} hosts, {plan.datastores} datastores"
    )
    head.add_row("data", f"{_tib(plan.total_bytes)} (changes nightly: {_tib(plan.changed_bytes)})")
    formula = Table(title="Classic sizing (cores = T/100 full, T·CR/25 incremental; 2 GiB RAM per task)")
    for col in ("mode", "moves", "needs MiB/s", "cores", "tasks", "RAM GiB", "proxies"):
        formula.add_column(col, justify="right" if col != "mode" else "left")
    for s in (plan.full, plan.incremental):
        formula.add_row(
            s.mode, _tib(s.moved_bytes), f"{s.throughput_mib_s:,.0f}", f"{s.cores:,.1f}",
            str(s.tasks), f"{s.ram_gib:,.0f}", str(s.proxies),
        )  # fmt: skip
    sim = Table(title="Simulated night (admission rules, per-task speed, datastore throughput)")
    for col in (
        "night",
        "proxies",
        "slots",
        "window h",
        "slot use",
        "first to run out",
        "most waiting",
        "advice",
    ):
        sim.add_column(col)
    for r in plan.simulations:
        most = r.waiting_s_by_resource[0][0] if r.waiting_s_by_resource else "none"
        first = f"{r.first_exhausted} @ {r.first_exhausted_at_s / 60:.0f} min"
        sim.add_row(
            r.label or r.mode, str(r.proxies), str(r.slots), f"{r.window_h:.2f}", f"{r.slot_utilization:.0%}",
            first, most, sim_advice(r, plan.window_h),
        )  # fmt: skip
    return Group(head, formula, sim) if plan.simulations else Group(head, formula)
