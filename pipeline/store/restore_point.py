"""Restore point records: the small JSON object that makes a backup of one VM visible.

It is written last, after every pack, index segment and manifest it names is durable; a crash
before that leaves no record, so no restore point that looks complete but is not.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Literal

Consistency = Literal["application", "filesystem", "crash"]
CONSISTENCY_LEVELS = ("application", "filesystem", "crash")
POINT_PREFIX = "points/"
POINT_FORMAT = 1


@dataclass(frozen=True)
class VmRef:
    name: str
    vm_id: str  # opaque: a vCenter instance UUID or moref, or a synthetic source's name


@dataclass(frozen=True)
class DiskRecord:
    disk_key: str
    label: str
    capacity: int
    manifest_key: str
    change_id: str | None
    full_read: bool
    full_read_reason: str | None = None


@dataclass(frozen=True)
class RestorePoint:
    id: str
    vm: VmRef
    created: datetime
    disks: tuple[DiskRecord, ...]
    consistency: Consistency
    source_kind: str
    job_name: str
    stats: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.created.tzinfo is None:
            raise ValueError("restore point time must be timezone-aware (UTC)")
        if self.consistency not in CONSISTENCY_LEVELS:
            raise ValueError(f"consistency must be one of {CONSISTENCY_LEVELS}")
        if not self.id or not all(c in "0123456789abcdef" for c in self.id):
            raise ValueError("restore point id must be lowercase hex")

    @staticmethod
    def new_id() -> str:
        return secrets.token_hex(16)

    @property
    def key(self) -> str:
        return point_key(self.id)

    def to_json(self) -> bytes:
        body = asdict(self)
        body["created"] = self.created.astimezone(timezone.utc).isoformat()
        body["stats"] = dict(self.stats)
        return json.dumps({"format": POINT_FORMAT, **body}, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> RestorePoint:
        body = json.loads(data)
        if body.pop("format", None) != POINT_FORMAT:
            raise ValueError("unknown restore point record format")
        return cls(
            id=body["id"],
            vm=VmRef(**body["vm"]),
            created=datetime.fromisoformat(body["created"]),
            disks=tuple(DiskRecord(**d) for d in body["disks"]),
            consistency=body["consistency"],
            source_kind=body["source_kind"],
            job_name=body["job_name"],
            stats=body["stats"],
        )


def point_key(point_id: str) -> str:
    return f"{POINT_PREFIX}{point_id}.json"
