"""The global chunk index during a run, sharded over Ray actors by the first byte of the chunk id.

Workers send ids in batches, never bytes. A new id is *claimed* by the first worker that asks, so
two workers never upload the same chunk; the others wait for it to become durable at the end of
their disk. Claims carry a lease the owner renews: when an owner dies (a killed worker), its claims
expire and pass to whoever is waiting, who then re-reads and uploads those blocks itself.

A chunk counts as known only once its pack is uploaded and its index entry is in a shard; ``flush``
writes the shard's new entries as an index segment, and the driver flushes every shard before it
commits a restore point, so a committed point never references a chunk the index cannot find.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import ray

from pipeline.ops.damaged import clear_damaged, damaged_chunk_ids
from pipeline.store.backend import ObjectStore, open_store
from pipeline.store.chunks import IndexEntry
from pipeline.store.index import INDEX_PREFIX, decode_parquet
from pipeline.store.repository import Repository

KNOWN, MINE, THEIRS = 0, 1, 2


@dataclass(frozen=True)
class RepoLocation:
    """Where the repository is; every process opens it for itself (nothing heavy is pickled)."""

    url: str
    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: str | None = None

    def store(self) -> ObjectStore:
        return open_store(
            self.url,
            endpoint_url=self.endpoint_url,
            region=self.region,
            addressing_style=self.addressing_style,
        )

    def open(self) -> Repository:
        return Repository.open(self.store())


class DedupShard:
    """One shard of the index: the known ids whose first byte maps here, and the live claims."""

    def __init__(self, location: RepoLocation, shard: int, shards: int, lease_s: float) -> None:
        self.repo = location.open()
        self.shard, self.shards, self.lease_s = shard, shards, lease_s
        self.known: set[bytes] = set()
        self.damaged: set[bytes] = set()
        self.segments: set[str] = set()  # index segments whose ids are in ``known``
        self.claims: dict[bytes, str] = {}
        self.leases: dict[str, float] = {}
        self.pending: list[IndexEntry] = []
        self.refresh()

    def refresh(self) -> int:
        """Learn what the repository holds now: index segments other writers (or a crashed run's
        recovery) added, and the chunks verify marked damaged. Called at every run start by a
        shard that lives across runs. Returns the number of known ids."""
        listed = set(self.repo.store.list_keys(INDEX_PREFIX))
        if not self.segments <= listed:  # segments were removed (a prune): start over
            self.known, self.segments = set(), set()
        for key in sorted(listed - self.segments):
            ids = decode_parquet(key, self.repo.store.get(key)).column("chunk_id").to_pylist()
            self.known.update(cid for cid in ids if cid[0] % self.shards == self.shard)
            self.segments.add(key)
        # a chunk verify found damaged counts as unknown: the next block that hashes to it is uploaded
        # again into a new pack, which heals every restore point that references it
        self.damaged = {cid for cid in damaged_chunk_ids(self.repo) if cid[0] % self.shards == self.shard}
        self.known -= self.damaged
        return len(self.known)

    def size(self) -> int:
        return len(self.known)

    def unindexed(self, ids: Sequence[bytes]) -> int:
        """How many of ``ids`` are not durable and indexed (after ``flush``: not in a segment)."""
        pending = {e.chunk_id for e in self.pending}
        return sum(1 for cid in ids if cid not in self.known or cid in pending)

    def _alive(self, owner: str) -> bool:
        return self.leases.get(owner, 0.0) > time.monotonic()

    def renew(self, owner: str) -> None:
        self.leases[owner] = time.monotonic() + self.lease_s

    def claim(self, ids: Sequence[bytes], owner: str) -> list[int]:
        """For each id: KNOWN (durable), MINE (upload it) or THEIRS (another live owner uploads it)."""
        self.renew(owner)
        out = []
        for cid in ids:
            if cid in self.known:
                out.append(KNOWN)
                continue
            holder = self.claims.get(cid)
            if holder is None or holder == owner or not self._alive(holder):
                self.claims[cid] = owner
                out.append(MINE)
            else:
                out.append(THEIRS)
        return out

    def add_entries(self, entries: Sequence[IndexEntry], owner: str) -> None:
        """Entries of a pack that is durable in the object store: its chunks are known from now on."""
        self.renew(owner)
        for e in entries:
            if e.chunk_id not in self.known:
                self.known.add(e.chunk_id)
                self.pending.append(e)
            self.claims.pop(e.chunk_id, None)

    def release(self, owner: str) -> None:
        """The owner is done (or gave up): drop whatever it still claims."""
        for cid in [c for c, o in self.claims.items() if o == owner]:
            del self.claims[cid]
        self.leases.pop(owner, None)

    def flush(self) -> str | None:
        """Write the entries added since the last flush as one index segment; its key or None."""
        if not self.pending:
            return None
        entries, self.pending = self.pending, []
        try:
            key = self.repo.write_index_segment(entries)
        except BaseException:
            self.pending = entries + self.pending
            raise
        self.segments.add(key)
        healed = {e.chunk_id for e in entries} & self.damaged
        if healed:
            clear_damaged(self.repo, healed)
            self.damaged -= healed
        return key


@dataclass
class ClaimTicket:
    count: int
    groups: list[list[int]]
    refs: dict[int, ray.ObjectRef]

    def result(self) -> list[int]:
        out = [KNOWN] * self.count
        for s, answer in zip(self.refs, ray.get(list(self.refs.values())), strict=True):
            for i, code in zip(self.groups[s], answer, strict=True):
                out[i] = code
        return out


class DedupIndex:
    """Client side: routes ids to their shard and batches the calls."""

    def __init__(self, shards: list[ray.actor.ActorHandle]) -> None:
        self.shards = shards

    @classmethod
    def start(cls, location: RepoLocation, shards: int | None = None, lease_s: float = 30.0) -> DedupIndex:
        """Start the shards; they load the index in the background while the run prepares VMs.

        One shard per proxy node by default (at most 8): enough to spread claims, few processes.
        """
        if shards is None:
            proxies = [
                n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("backup_slots")
            ]
            shards = max(1, min(8, len(proxies)))
        actor = ray.remote(num_cpus=0, max_restarts=0)(DedupShard)
        return cls([actor.remote(location, i, shards, lease_s) for i in range(shards)])

    def _route(self, ids: Sequence[bytes]) -> list[list[int]]:
        groups: list[list[int]] = [[] for _ in self.shards]
        for i, cid in enumerate(ids):
            groups[cid[0] % len(self.shards)].append(i)
        return groups

    def claim(self, ids: Sequence[bytes], owner: str) -> list[int]:
        return self.claim_async(ids, owner).result()

    def claim_async(self, ids: Sequence[bytes], owner: str) -> ClaimTicket:
        """Send the claim now, read the answer later: the caller keeps working meanwhile."""
        groups = self._route(ids)
        refs = {s: self.shards[s].claim.remote([ids[i] for i in g], owner) for s, g in enumerate(groups) if g}
        return ClaimTicket(len(ids), groups, refs)

    def add_entries(self, entries: Sequence[IndexEntry], owner: str) -> None:
        groups = self._route([e.chunk_id for e in entries])
        ray.get(
            [
                self.shards[s].add_entries.remote([entries[i] for i in g], owner)
                for s, g in enumerate(groups)
                if g
            ]
        )

    def renew(self, owner: str) -> None:
        ray.get([s.renew.remote(owner) for s in self.shards])

    def release(self, owner: str) -> None:
        ray.get([s.release.remote(owner) for s in self.shards])

    def flush(self) -> list[str]:
        return [k for k in ray.get([s.flush.remote() for s in self.shards]) if k]

    def size(self) -> int:
        return sum(ray.get([s.size.remote() for s in self.shards]))

    def unindexed(self, ids: pa.Array, batch: int = 100_000) -> int:
        """How many of ``ids`` (binary(32)) no shard holds as durable and indexed: the commit check
        of a backup, at a cost that grows with the point's disks, not with the repository."""
        refs = []
        for start in range(0, len(ids), batch):
            part = ids.slice(start, batch).to_pylist()
            refs.extend(
                self.shards[s].unindexed.remote([part[i] for i in g])
                for s, g in enumerate(self._route(part))
                if g
            )
        return sum(ray.get(refs))

    def refresh(self, timeout_s: float | None = None) -> int:
        """Every shard re-reads what changed in the repository since it loaded; raises
        ``ray.exceptions.RayActorError`` (or ``GetTimeoutError``) when a shard is gone."""
        return sum(ray.get([s.refresh.remote() for s in self.shards], timeout=timeout_s))

    def stop(self) -> None:
        for s in self.shards:
            ray.kill(s)
