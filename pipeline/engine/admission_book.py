"""The admission ledger: who holds which snapshot and read, who waits, and in what order.

Pure bookkeeping with an injectable clock and no Ray, so the admission actor (``admission.py``)
and the window planner's simulation (``pipeline/ops/window.py``) run the very same rules.
See ``admission.py`` for the rules and the call sequence.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pipeline.engine.latency import LatencyGate
from pipeline.engine.placement import PlacementLimits
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
    blocked_kind: str = ""  # the resource kind it last waited for, e.g. "snapshots on host"
    snap_keys: tuple[Key, ...] = ()
    read_keys: tuple[Key, ...] = ()


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
        strict_after_s: float = 300.0,
    ) -> None:
        self.limits = limits
        self.gate = gate
        self.total_slots = total_slots
        self.lease_s = lease_s
        self.clock = clock
        self.strict_after_s = strict_after_s
        self.log: list[GrantEvent] = []
        self.usage: dict[Key, int] = {}
        self.grants: dict[str, _Grant] = {}
        self._first: list[_Request] = []  # reads of VMs with an open snapshot
        self._later: list[_Request] = []  # new VMs, and reads of VMs without a snapshot
        self._held_by_vm: dict[str, dict[str, int]] = {}  # vm -> grant kind -> count
        self._fixed_caps = {
            "snapshots on host": limits.max_snapshots_per_host,
            "snapshots on datastore": limits.max_snapshots_per_datastore,
            "disk reads on host": limits.max_disks_per_host,
        }
        self._tickets = itertools.count(1)
        self._ids = itertools.count(1)

    # -- asking -------------------------------------------------------------------------------
    def request(
        self, vm_id: str, host: str, snapshot_datastores: Iterable[str], read_datastore: str | None
    ) -> int:
        snap = tuple(dict.fromkeys(snapshot_datastores))
        held = self._held_by_vm.get(vm_id, {})
        if snap and held.get("snapshot"):
            raise AdmissionError(f"VM {vm_id} asked for a second snapshot grant", "release the first one")
        if snap and held.get("read"):
            # Holding a read while queueing for a snapshot can deadlock against VMs that hold a
            # snapshot and queue for reads; admit_vm takes both at once instead.
            raise AdmissionError(
                f"VM {vm_id} asked for a snapshot while holding a read grant",
                "use admit_vm, which grants the snapshot and the first read together",
            )
        req = _Request(next(self._tickets), vm_id, host, snap, read_datastore, self.clock())
        req.snap_keys, req.read_keys = self._snapshot_keys(req), self._read_keys(req)
        (self._first if held.get("snapshot") and not snap else self._later).append(req)
        return req.ticket

    def cancel(self, ticket: int) -> None:
        self._first = [r for r in self._first if r.ticket != ticket]
        self._later = [r for r in self._later if r.ticket != ticket]

    def waiting(self) -> int:
        return len(self._first) + len(self._later)

    def waiting_by_resource(self) -> dict[str, int]:
        """How many waiters each resource kind held back at the last dispatch."""
        counts: dict[str, int] = {}
        for req in [*self._first, *self._later]:
            counts[req.blocked_kind] = counts.get(req.blocked_kind, 0) + 1
        return counts

    # -- granting -----------------------------------------------------------------------------
    def _cap(self, key: Key) -> float:
        kind, name = key
        fixed = self._fixed_caps.get(kind)
        if fixed is not None:
            return fixed
        if kind == "reads on datastore":
            return self.gate.read_limit(name)
        if kind == "proxy slots":
            return math.inf if self.total_slots is None else self.total_slots
        raise KeyError(kind)

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
        usage, cap = self.usage, self._cap
        now = self.clock()
        for req in [*self._first, *self._later]:
            snap_keys, read_keys = req.snap_keys, req.read_keys
            keys = snap_keys + read_keys
            # Full keys, and keys an earlier waiter is first in line for, block this waiter.
            blocking = [k for k in keys if k in held_for_capacity or usage.get(k, 0) >= cap(k)]
            if blocking:
                # It becomes first in line for what blocks it. Holding its other keys too would
                # stop unrelated VMs behind it (head-of-line blocking), so only a waiter older than
                # strict_after_s does that, which rules out starvation. The cluster-wide slot key is
                # never held for a waiter that waits for something else.
                if now - req.since >= self.strict_after_s:
                    held_for_capacity.update(k for k in keys if k[0] != "proxy slots" or k in blocking)
                else:
                    held_for_capacity.update(blocking)
                k = blocking[0]
                queued = usage.get(k, 0) < cap(k)
                req.blocked_by = f"{k[0]} {k[1]}, behind earlier waiters" if queued else f"{k[0]} {k[1]} full"
                req.blocked_kind = k[0]
                continue
            stopped = {k for k in read_keys[:1] if not self.gate.may_start(k[1])}
            stopped |= {k for k in keys if k in held_for_latency}
            if stopped:
                held_for_latency.update(stopped)
                req.blocked_by = f"datastore {req.read_datastore} stopped by latency"
                req.blocked_kind = "datastore latency"
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
        held = self._held_by_vm.setdefault(req.vm_id, {})
        held[kind] = held.get(kind, 0) + 1
        self._log("grant", self.grants[grant_id], f"granted {why}")
        return grant_id

    # -- releasing ----------------------------------------------------------------------------
    def release(
        self, grant_id: str, kind: str, reason: str = "released by holder", event: str = "release"
    ) -> bool:
        """Free a grant; False if it is unknown or already gone (releasing twice is harmless)."""
        grant = self.grants.get(grant_id)
        if grant is None:
            return False
        if grant.kind != kind:
            raise AdmissionError(f"grant {grant_id} is a {grant.kind} grant, not a {kind} grant")
        del self.grants[grant_id]
        for k in grant.keys:
            self.usage[k] -= 1
        held = self._held_by_vm[grant.vm_id]
        held[kind] -= 1
        if not any(held.values()):
            del self._held_by_vm[grant.vm_id]
        self._log(event, grant, reason)
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
            self.release(g.grant_id, g.kind, f"lease of {self.lease_s:g} s expired: holder gone", "expire")
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
