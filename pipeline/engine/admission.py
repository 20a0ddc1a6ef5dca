"""Admission: the one authority over snapshots and disk reads, as a Ray async actor.

Rules it enforces (caps from ``PlacementLimits``):
- at most ``max_snapshots_per_host`` open snapshots per ESXi host and ``max_snapshots_per_datastore``
  per datastore;
- at most ``max_reads_per_datastore`` concurrent disk reads per datastore (fewer when the adaptive
  latency gate shrank it), ``max_disks_per_host`` per host (the NBD/NFC budget), and no more reads
  than the cluster has proxy slots, so a granted read never waits for a slot;
- no new read on a datastore the latency gate has stopped.

Snapshots are taken just in time: ``admit_vm`` grants a VM's snapshot together with the read of its
first disk, only when both are free, so no snapshot ever sits open in a queue. Reads for a VM that
already holds a snapshot go ahead of new VMs, to close snapshots sooner. Waiters are served first
in, first out per resource: a waiter short of capacity holds its place on every resource it needs,
so later waiters cannot overtake it there (no starvation), yet a waiter on a latency-stopped
datastore does not block its host for everyone else.

Every grant is a lease: the holder renews it (the context managers below do) and a grant whose
holder died expires after ``lease_s`` and frees its place.

Per VM, the engine calls (see ``admitted_vm`` / ``admitted_read`` for the same in context managers)::

    vm = await adm.admit_vm.remote(vm_id, host, datastores, disk_datastores[0])  # snapshot + disk 0
    ... take the snapshot, start disk 0's task with grant vm.read ...
    for every other disk i:  g = await adm.admit_read.remote(vm_id, host, disk_datastores[i])
                             ... run disk i's task; finally: adm.release_read.remote(g)
    finally: release_read(vm.read) when disk 0 ends; remove the snapshot; release_snapshot(vm.snapshot)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import ray

from pipeline.engine.latency import LatencyDecision, LatencyGate, LatencySource
from pipeline.engine.placement import SLOT_RESOURCE, PlacementLimits
from pipeline.errors import VmpumpError

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (resource kind, name), e.g. ("snapshots on host", "esx-01")


class AdmissionError(VmpumpError):
    """A caller asked for admission in a way that could deadlock or double-book."""


@dataclass(frozen=True)
class GrantEvent:
    at: float  # wall clock (time.time), comparable across processes of one machine
    event: str  # "grant", "release", "expire"
    grant_id: str
    kind: str  # "snapshot" or "read"
    vm_id: str
    host: str
    datastores: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class VmGrant:
    snapshot: str
    read: str


@dataclass
class _Request:
    ticket: int
    vm_id: str
    host: str
    snapshot_datastores: tuple[str, ...]  # empty: no snapshot asked
    read_datastore: str | None  # None: no read asked
    since: float
    blocked_by: str = ""


@dataclass
class _Grant:
    grant_id: str
    kind: str
    vm_id: str
    host: str
    datastores: tuple[str, ...]
    keys: tuple[Key, ...]
    expires_at: float = field(default=0.0)


class AdmissionBook:
    """The ledger and FIFO queue behind the actor; no Ray, no asyncio, a clock you can inject."""

    def __init__(
        self,
        limits: PlacementLimits,
        gate: LatencyGate,
        total_slots: int | None = None,
        lease_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self.gate = gate
        self.total_slots = total_slots
        self.lease_s = lease_s
        self.clock = clock
        self.log: list[GrantEvent] = []
        self.usage: dict[Key, int] = {}
        self.grants: dict[str, _Grant] = {}
        self._first: list[_Request] = []  # reads of VMs with an open snapshot
        self._later: list[_Request] = []  # new VMs, and reads of VMs without a snapshot
        self._tickets = itertools.count(1)
        self._ids = itertools.count(1)

    # -- asking -------------------------------------------------------------------------------
    def request(
        self, vm_id: str, host: str, snapshot_datastores: Iterable[str], read_datastore: str | None
    ) -> int:
        snap = tuple(dict.fromkeys(snapshot_datastores))
        held = [g for g in self.grants.values() if g.vm_id == vm_id]
        if snap and any(g.kind == "snapshot" for g in held):
            raise AdmissionError(f"VM {vm_id} asked for a second snapshot grant", "release the first one")
        if snap and any(g.kind == "read" for g in held):
            # Holding a read while queueing for a snapshot can deadlock against VMs that hold a
            # snapshot and queue for reads; admit_vm takes both at once instead.
            raise AdmissionError(
                f"VM {vm_id} asked for a snapshot while holding a read grant",
                "use admit_vm, which grants the snapshot and the first read together",
            )
        req = _Request(next(self._tickets), vm_id, host, snap, read_datastore, self.clock())
        has_snapshot = any(g.kind == "snapshot" for g in held)
        (self._first if has_snapshot and not snap else self._later).append(req)
        return req.ticket

    def cancel(self, ticket: int) -> None:
        self._first = [r for r in self._first if r.ticket != ticket]
        self._later = [r for r in self._later if r.ticket != ticket]

    def waiting(self) -> int:
        return len(self._first) + len(self._later)

    # -- granting -----------------------------------------------------------------------------
    def _cap(self, key: Key) -> float:
        kind, name = key
        caps: dict[str, float] = {
            "snapshots on host": self.limits.max_snapshots_per_host,
            "snapshots on datastore": self.limits.max_snapshots_per_datastore,
            "disk reads on host": self.limits.max_disks_per_host,
            "proxy slots": math.inf if self.total_slots is None else self.total_slots,
        }
        if kind == "reads on datastore":
            return self.gate.read_limit(name)
        return caps[kind]

    @staticmethod
    def _snapshot_keys(req: _Request) -> tuple[Key, ...]:
        if not req.snapshot_datastores:
            return ()
        return (("snapshots on host", req.host),) + tuple(
            ("snapshots on datastore", ds) for ds in req.snapshot_datastores
        )

    @staticmethod
    def _read_keys(req: _Request) -> tuple[Key, ...]:
        if req.read_datastore is None:
            return ()
        return (
            ("reads on datastore", req.read_datastore),
            ("disk reads on host", req.host),
            ("proxy slots", "cluster"),
        )

    def dispatch(self) -> list[tuple[int, str | VmGrant]]:
        """Grant every waiter that may go now, in order; returns (ticket, grant) pairs."""
        granted: list[tuple[int, str | VmGrant]] = []
        held_for_capacity: set[Key] = set()
        held_for_latency: set[Key] = set()
        for req in [*self._first, *self._later]:
            snap_keys, read_keys = self._snapshot_keys(req), self._read_keys(req)
            keys = snap_keys + read_keys
            full = [k for k in keys if self.usage.get(k, 0) >= self._cap(k)]
            queued = [k for k in keys if k in held_for_capacity]
            if full or queued:
                held_for_capacity.update(keys)
                k = (full or queued)[0]
                req.blocked_by = f"{k[0]} {k[1]} full" if full else f"{k[0]} {k[1]}, behind earlier waiters"
                continue
            stopped = {k for k in read_keys[:1] if not self.gate.may_start(k[1])}
            stopped |= {k for k in keys if k in held_for_latency}
            if stopped:
                held_for_latency.update(stopped)
                req.blocked_by = f"datastore {req.read_datastore} stopped by latency"
                continue
            granted.append((req.ticket, self._grant(req, snap_keys, read_keys)))
        done = {t for t, _ in granted}
        self._first = [r for r in self._first if r.ticket not in done]
        self._later = [r for r in self._later if r.ticket not in done]
        return granted

    def _grant(self, req: _Request, snap_keys: tuple[Key, ...], read_keys: tuple[Key, ...]) -> str | VmGrant:
        waited = self.clock() - req.since
        why = f"after {waited:.2f} s waiting for {req.blocked_by}" if req.blocked_by else "at once"
        ids = {}
        if snap_keys:
            ids["snapshot"] = self._open("snapshot", req, req.snapshot_datastores, snap_keys, why)
        if read_keys:
            assert req.read_datastore is not None
            ids["read"] = self._open("read", req, (req.read_datastore,), read_keys, why)
        if len(ids) == 2:
            return VmGrant(snapshot=ids["snapshot"], read=ids["read"])
        return next(iter(ids.values()))

    def _open(
        self, kind: str, req: _Request, datastores: tuple[str, ...], keys: tuple[Key, ...], why: str
    ) -> str:
        grant_id = f"{kind[0]}-{next(self._ids):06d}"
        self.grants[grant_id] = _Grant(
            grant_id, kind, req.vm_id, req.host, datastores, keys, self.clock() + self.lease_s
        )
        for k in keys:
            self.usage[k] = self.usage.get(k, 0) + 1
        self._log("grant", self.grants[grant_id], f"granted {why}")
        return grant_id

    # -- releasing ----------------------------------------------------------------------------
    def release(self, grant_id: str, kind: str, reason: str = "released by holder") -> bool:
        """Free a grant; False if it is unknown or already gone (releasing twice is harmless)."""
        grant = self.grants.get(grant_id)
        if grant is None:
            return False
        if grant.kind != kind:
            raise AdmissionError(f"grant {grant_id} is a {grant.kind} grant, not a {kind} grant")
        del self.grants[grant_id]
        for k in grant.keys:
            self.usage[k] -= 1
        self._log("release" if reason == "released by holder" else "expire", grant, reason)
        return True

    def renew(self, grant_ids: Iterable[str]) -> list[str]:
        """Extend the leases; returns the ids that are no longer held (expired or released)."""
        lost = []
        for grant_id in grant_ids:
            grant = self.grants.get(grant_id)
            if grant is None:
                lost.append(grant_id)
            else:
                grant.expires_at = self.clock() + self.lease_s
        return lost

    def expire(self) -> list[str]:
        now = self.clock()
        dead = [g for g in self.grants.values() if g.expires_at < now]
        for g in dead:
            self.release(g.grant_id, g.kind, reason=f"lease of {self.lease_s:g} s expired: holder gone")
        return [g.grant_id for g in dead]

    def _log(self, event: str, grant: _Grant, reason: str) -> None:
        self.log.append(
            GrantEvent(
                time.time(),
                event,
                grant.grant_id,
                grant.kind,
                grant.vm_id,
                grant.host,
                grant.datastores,
                reason,
            )
        )
        log.debug("%s %s %s (VM %s): %s", event, grant.kind, grant.grant_id, grant.vm_id, reason)


class AdmissionController:
    """The Ray async actor around ``AdmissionBook``; create it with ``start_admission``.

    ``latency_source`` is a ``LatencySource`` or a zero-argument factory for one: pass a factory
    for sources that hold a connection (a vCenter session does not pickle into the actor).
    """

    def __init__(
        self,
        limits: PlacementLimits,
        latency_source: LatencySource | Callable[[], LatencySource] | None = None,
        poll_interval_s: float = 20.0,
        total_slots: int | None = None,
        lease_s: float = 120.0,
        latency_target_ms: float | None = None,
    ) -> None:
        logging.basicConfig(level=logging.INFO)
        if isinstance(latency_source, type) or (
            latency_source is not None and not isinstance(latency_source, LatencySource)
        ):
            latency_source = latency_source()
        self._source = latency_source
        self._poll_interval_s = poll_interval_s
        self._follow_cluster_slots = total_slots is None
        gate = LatencyGate(
            limits.latency_stop_ms,
            limits.latency_slow_ms,
            limits.max_reads_per_datastore,
            adaptive=limits.adaptive,
            target_ms=latency_target_ms,
        )
        self._book = AdmissionBook(limits, gate, total_slots, lease_s)
        self._waiters: dict[int, asyncio.Future[Any]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def ready(self) -> bool:
        """Starts the background loops (latency polls, lease expiry); call once after creation."""
        if not self._tasks:
            if self._follow_cluster_slots:
                await self._refresh_slots()
            self._tasks = [asyncio.create_task(self._housekeeping())]
            if self._source is not None:
                await self.poll_latency_now()
                self._tasks.append(asyncio.create_task(self._latency_loop()))
        return True

    async def admit_vm(
        self, vm_id: str, host: str, datastores: list[str], first_disk_datastore: str
    ) -> VmGrant:
        """Snapshot grant (host + every datastore of the VM) together with disk 0's read grant."""
        if not datastores:
            raise AdmissionError(f"VM {vm_id} has no datastores", "a VM to back up has at least one disk")
        return await self._wait(self._book.request(vm_id, host, datastores, first_disk_datastore))

    async def admit_snapshot(self, vm_id: str, host: str, datastores: list[str]) -> str:
        """A snapshot grant alone, for work that reads no disk; a backup uses ``admit_vm``."""
        return await self._wait(self._book.request(vm_id, host, datastores, None))

    async def admit_read(self, vm_id: str, host: str, datastore: str) -> str:
        """A read grant for one disk (disks after the first; the first comes with ``admit_vm``)."""
        return await self._wait(self._book.request(vm_id, host, (), datastore))

    def release_snapshot(self, grant_id: str) -> bool:
        return self._release(grant_id, "snapshot")

    def release_read(self, grant_id: str) -> bool:
        return self._release(grant_id, "read")

    def renew(self, grant_ids: list[str]) -> list[str]:
        return self._book.renew(grant_ids)

    def reader_delay_s(self, datastore: str) -> float:
        return self._book.gate.reader_delay_s(datastore)

    def read_limit(self, datastore: str) -> int:
        return self._book.gate.read_limit(datastore)

    def grants_log(self) -> list[GrantEvent]:
        return list(self._book.log)

    def decisions_log(self) -> list[LatencyDecision]:
        return list(self._book.gate.decisions)

    def usage(self) -> dict[str, int]:
        return {f"{k[0]} {k[1]}": n for k, n in self._book.usage.items() if n}

    async def poll_latency_now(self) -> list[LatencyDecision]:
        """One poll of the latency source, then wake whoever it lets go."""
        assert self._source is not None
        try:
            sample = await asyncio.to_thread(self._source.datastore_latency_ms)
        except Exception as e:  # noqa: BLE001 - a failed poll must not stop the backup
            return [self._book.gate.source_failed(e)]
        made = self._book.gate.observe(sample)
        self._dispatch()
        return made

    async def _wait(self, ticket: int) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters[ticket] = future
        self._dispatch()
        try:
            return await future
        except asyncio.CancelledError:
            self._book.cancel(ticket)
            self._waiters.pop(ticket, None)
            raise

    def _release(self, grant_id: str, kind: str) -> bool:
        released = self._book.release(grant_id, kind)
        self._dispatch()
        return released

    def _dispatch(self) -> None:
        for ticket, grant in self._book.dispatch():
            future = self._waiters.pop(ticket, None)
            if future is not None and not future.done():
                future.set_result(grant)

    async def _latency_loop(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval_s)
            await self.poll_latency_now()

    async def _housekeeping(self) -> None:
        tick = min(1.0, self._book.lease_s / 4)
        last_slots = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            if self._book.expire():
                self._dispatch()
            if self._follow_cluster_slots and time.monotonic() - last_slots > 5.0:
                last_slots = time.monotonic()
                await self._refresh_slots()

    async def _refresh_slots(self) -> None:
        # Proxies join and leave; the slot count follows so grants never exceed live slots.
        resources = await asyncio.to_thread(ray.cluster_resources)
        slots = int(resources.get(SLOT_RESOURCE, 0))
        if slots != self._book.total_slots:
            log.info("proxy slots in the cluster: %s -> %s", self._book.total_slots, slots)
            self._book.total_slots = slots
            self._dispatch()


def start_admission(
    limits: PlacementLimits,
    latency_source: LatencySource | Callable[[], LatencySource] | None = None,
    *,
    poll_interval_s: float = 20.0,
    total_slots: int | None = None,
    lease_s: float = 120.0,
    latency_target_ms: float | None = None,
) -> Any:
    """Create the admission actor (no CPU, many concurrent calls) and wait until it runs.

    ``total_slots=None`` follows the cluster's ``backup_slots``; pass a number to pin it.
    """
    actor_class = ray.remote(AdmissionController)
    actor = actor_class.options(num_cpus=0, max_concurrency=10_000).remote(
        limits, latency_source, poll_interval_s, total_slots, lease_s, latency_target_ms
    )
    ray.get(actor.ready.remote())
    return actor


async def _renew_forever(admission: Any, grant_ids: list[str], every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        await admission.renew.remote(grant_ids)


@contextlib.asynccontextmanager
async def admitted_vm(
    admission: Any,
    vm_id: str,
    host: str,
    datastores: list[str],
    first_disk_datastore: str,
    renew_s: float = 30.0,
) -> AsyncIterator[VmGrant]:
    """``admit_vm``, with the leases renewed while inside and both grants released on the way out."""
    grant: VmGrant = await admission.admit_vm.remote(vm_id, host, datastores, first_disk_datastore)
    renewer = asyncio.create_task(_renew_forever(admission, [grant.snapshot, grant.read], renew_s))
    try:
        yield grant
    finally:
        renewer.cancel()
        await admission.release_read.remote(grant.read)  # no-op if disk 0 released it already
        await admission.release_snapshot.remote(grant.snapshot)


@contextlib.asynccontextmanager
async def admitted_read(
    admission: Any, vm_id: str, host: str, datastore: str, grant: str | None = None, renew_s: float = 30.0
) -> AsyncIterator[str]:
    """A read grant held for the block: a new one, or ``grant`` (disk 0's, from ``admitted_vm``)."""
    grant_id: str = grant or await admission.admit_read.remote(vm_id, host, datastore)
    renewer = asyncio.create_task(_renew_forever(admission, [grant_id], renew_s))
    try:
        yield grant_id
    finally:
        renewer.cancel()
        await admission.release_read.remote(grant_id)


class ReadThrottle:
    """For a running reader: asks the actor for its datastore's pause at most every ``refresh_s``."""

    def __init__(self, admission: Any, datastore: str, refresh_s: float = 1.0) -> None:
        self._admission = admission
        self._datastore = datastore
        self._refresh_s = refresh_s
        self._delay_s = 0.0
        self._asked_at = -math.inf

    def pause(self) -> float:
        """Sleep the current pause (zero unless the datastore is over the slow threshold)."""
        if time.monotonic() - self._asked_at >= self._refresh_s:
            self._delay_s = ray.get(self._admission.reader_delay_s.remote(self._datastore))
            self._asked_at = time.monotonic()
        if self._delay_s > 0:
            time.sleep(self._delay_s)
        return self._delay_s
