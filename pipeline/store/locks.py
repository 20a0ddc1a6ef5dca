"""Repository locks: one small JSON object per holder under ``locks/``, with a lease.

Backups hold a shared lock; prune and garbage collection hold an exclusive one. A lock whose lease
has run out (its holder crashed or lost the network) no longer counts. There is no compare-and-swap
in plain S3, so a taker writes its lock first and then looks for conflicting ones; two racing
takers both see each other and both back off, which is safe.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

from pipeline.store.backend import ObjectStore
from pipeline.store.errors import ObjectMissingError, RepositoryLockedError

LOCK_PREFIX = "locks/"
LockKind = Literal["shared", "exclusive"]
# Clocks of different hosts disagree a little; a lease counts this much longer for everyone else.
CLOCK_SKEW = timedelta(seconds=30)


@dataclass(frozen=True)
class LockRecord:
    id: str
    kind: LockKind
    owner: str
    host: str
    pid: int
    created: str
    expires: str

    @property
    def key(self) -> str:
        return f"{LOCK_PREFIX}{self.kind}-{self.id}.json"

    def live(self, now: datetime) -> bool:
        return datetime.fromisoformat(self.expires) + CLOCK_SKEW > now


class RepositoryLock:
    """Take with ``acquire()`` (or ``with``); call ``refresh()`` well within each lease."""

    def __init__(self, store: ObjectStore, kind: LockKind, *, owner: str, lease: timedelta) -> None:
        if kind not in ("shared", "exclusive"):
            raise ValueError(f"lock kind must be shared or exclusive, not {kind!r}")
        self._store = store
        self._lease = lease
        self.record = self._record(kind, owner, secrets.token_hex(8))
        self.held = False

    def _record(self, kind: LockKind, owner: str, lock_id: str) -> LockRecord:
        now = datetime.now(timezone.utc)
        return LockRecord(
            lock_id,
            kind,
            owner,
            socket.gethostname(),
            os.getpid(),
            now.isoformat(),
            (now + self._lease).isoformat(),
        )

    def acquire(self) -> RepositoryLock:
        self._store.put(self.record.key, json.dumps(asdict(self.record)).encode())
        conflict = next((other for other in live_locks(self._store) if self._conflicts(other)), None)
        if conflict is not None:
            self._store.delete(self.record.key)
            raise RepositoryLockedError(
                f"the repository is locked ({conflict.kind}) by {conflict.owner} on {conflict.host} "
                f"pid {conflict.pid} until {conflict.expires}",
                "wait for that run to finish; a crashed holder's lock expires with its lease",
            )
        self.held = True
        return self

    def _conflicts(self, other: LockRecord) -> bool:
        if other.id == self.record.id:
            return False
        return self.record.kind == "exclusive" or other.kind == "exclusive"

    def refresh(self) -> None:
        """Extend the lease from now."""
        r = self.record
        self.record = LockRecord(
            r.id,
            r.kind,
            r.owner,
            r.host,
            r.pid,
            r.created,
            (datetime.now(timezone.utc) + self._lease).isoformat(),
        )
        self._store.put(self.record.key, json.dumps(asdict(self.record)).encode())

    def release(self) -> None:
        if self.held:
            self._store.delete(self.record.key)
            self.held = False

    def __enter__(self) -> RepositoryLock:
        return self if self.held else self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def live_locks(store: ObjectStore) -> list[LockRecord]:
    """Every lock whose lease has not run out."""
    now = datetime.now(timezone.utc)
    records = []
    for key in store.list_keys(LOCK_PREFIX):
        try:
            record = LockRecord(**json.loads(store.get(key)))
        except ObjectMissingError:  # released while we listed
            continue
        if record.live(now):
            records.append(record)
    return records
