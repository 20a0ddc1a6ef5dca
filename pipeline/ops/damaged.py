"""Damaged-chunk markers: ``damaged/<chunk id hex>`` objects that verify writes (FORMAT.md, "Damaged
chunks") so the next backup re-uploads those blocks when its source still has them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from pipeline.store.repository import Repository

DAMAGED_PREFIX = "damaged/"


@dataclass(frozen=True)
class DamageMarker:
    chunk_id: str  # hex
    pack_id: str | None
    kind: str  # "missing-index" | "missing-pack" | "damaged-pack" | "damaged-chunk"
    detail: str
    points: tuple[str, ...]
    found: str  # ISO 8601 UTC


def mark_damaged(
    repo: Repository,
    chunk_ids: Iterable[bytes],
    *,
    pack_id: str | None,
    kind: str,
    detail: str,
    points: Iterable[str],
) -> int:
    """Write a marker per chunk (rewriting an older one); returns how many were written."""
    found = datetime.now(timezone.utc).isoformat()
    point_ids = tuple(sorted(points))
    count = 0
    for cid in chunk_ids:
        marker = DamageMarker(cid.hex(), pack_id, kind, detail, point_ids, found)
        repo.store.put(damaged_key(cid), json.dumps(asdict(marker), indent=1).encode())
        count += 1
    return count


def damaged_chunk_ids(repo: Repository) -> set[bytes]:
    """Ids of every chunk verify found missing or damaged and no backup has healed yet."""
    return {bytes.fromhex(key.rsplit("/", 1)[-1]) for key in repo.store.list_keys(DAMAGED_PREFIX)}


def damage_markers(repo: Repository) -> list[DamageMarker]:
    out = []
    for key in repo.store.list_keys(DAMAGED_PREFIX):
        body = json.loads(repo.store.get(key))
        out.append(DamageMarker(**{**body, "points": tuple(body["points"])}))
    return out


def clear_damaged(repo: Repository, chunk_ids: Iterable[bytes]) -> None:
    """Remove the markers of chunks a backup has stored again (in a new pack, newly indexed)."""
    for cid in chunk_ids:
        repo.store.delete(damaged_key(cid))


def damaged_key(chunk_id: bytes) -> str:
    return f"{DAMAGED_PREFIX}{chunk_id.hex()}"
