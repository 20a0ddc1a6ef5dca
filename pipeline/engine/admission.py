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
in, first out per resource: a waiter is first in line for every resource that blocks it, so no later
waiter takes that resource when it frees. It does not hold resources it is not waiting for (that
would stall unrelated VMs behind one busy host), except once it has waited ``strict_after_s``: then
it holds all of them, so no waiter starves. A latency-stopped datastore blocks only itself.

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
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import ray

from pipeline.engine.admission_book import AdmissionBook, AdmissionError, GrantEvent, VmGrant
from pipeline.engine.latency import LatencyDecision, LatencyGate, LatencySource
from pipeline.engine.placement import SLOT_RESOURCE, PlacementLimits

__all__ = [
    "AdmissionBook",
    "AdmissionController",
    "AdmissionError",
    "GrantEvent",
    "ReadThrottle",
    "VmGrant",
    "admitted_read",
    "admitted_read_sync",
    "admitted_vm",
    "admitted_vm_sync",
    "start_admission",
]

log = logging.getLogger(__name__)


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
        strict_after_s: float = 300.0,
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
        self._book = AdmissionBook(limits, gate, total_slots, lease_s, strict_after_s=strict_after_s)
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

    def begin_run(self) -> bool:
        """A new run of the driver that keeps this actor: start fresh logs. False while grants are
        still held or requested (the actor is then not reused)."""
        if self._book.grants or self._waiters:
            return False
        self._book.log.clear()
        self._book.gate.decisions.clear()
        return True

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
                continue
            # The caller gave up between asking and this grant: hand the places straight back.
            if isinstance(grant, VmGrant):
                self._book.release(grant.read, "read", reason="waiter gone before the grant")
                self._book.release(grant.snapshot, "snapshot", reason="waiter gone before the grant")
            else:
                self._book.release(grant, "read", reason="waiter gone before the grant")

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
    strict_after_s: float = 300.0,
) -> Any:
    """Create the admission actor (no CPU, many concurrent calls) and wait until it runs.

    ``total_slots=None`` follows the cluster's ``backup_slots``; pass a number to pin it.
    """
    actor_class = ray.remote(AdmissionController)
    actor = actor_class.options(num_cpus=0, max_concurrency=10_000).remote(
        limits, latency_source, poll_interval_s, total_slots, lease_s, latency_target_ms, strict_after_s
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


class _RenewThread(threading.Thread):
    """Renews grants every ``every_s`` from a thread, for callers that are not asyncio code."""

    def __init__(self, admission: Any, grant_ids: list[str], every_s: float) -> None:
        super().__init__(daemon=True, name="vmpump-lease-renewal")
        self._admission, self._ids, self._every_s = admission, grant_ids, every_s
        self._stop = threading.Event()

    def run(self) -> None:
        while not self._stop.wait(self._every_s):
            ray.get(self._admission.renew.remote(self._ids))

    def stop(self) -> None:
        self._stop.set()


@contextlib.contextmanager
def admitted_vm_sync(
    admission: Any,
    vm_id: str,
    host: str,
    datastores: list[str],
    first_disk_datastore: str,
    renew_s: float = 30.0,
) -> Iterator[VmGrant]:
    """``admitted_vm`` for blocking code (a plain Ray task): same grants, renewed from a thread."""
    grant: VmGrant = ray.get(admission.admit_vm.remote(vm_id, host, datastores, first_disk_datastore))
    renewer = _RenewThread(admission, [grant.snapshot, grant.read], renew_s)
    renewer.start()
    try:
        yield grant
    finally:
        renewer.stop()
        ray.get(
            [admission.release_read.remote(grant.read), admission.release_snapshot.remote(grant.snapshot)]
        )


@contextlib.contextmanager
def admitted_read_sync(
    admission: Any, vm_id: str, host: str, datastore: str, grant: str | None = None, renew_s: float = 30.0
) -> Iterator[str]:
    """``admitted_read`` for blocking code."""
    grant_id: str = grant or ray.get(admission.admit_read.remote(vm_id, host, datastore))
    renewer = _RenewThread(admission, [grant_id], renew_s)
    renewer.start()
    try:
        yield grant_id
    finally:
        renewer.stop()
        ray.get(admission.release_read.remote(grant_id))


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
