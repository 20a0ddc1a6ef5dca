"""Which restore point a command means: ``latest``, an id or unique prefix, or "as of" a time."""

from __future__ import annotations

from datetime import datetime, timezone

from pipeline.errors import UsageError
from pipeline.store.errors import RestorePointNotFoundError
from pipeline.store.repository import Repository
from pipeline.store.restore_point import DiskRecord, RestorePoint


def select_point(
    repo: Repository, ref: str | None = "latest", *, vm: str | None = None, as_of: datetime | None = None
) -> RestorePoint:
    """The restore point ``ref`` names, or with ``as_of``: the newest point of ``vm`` at or before it.

    ``vm`` matches a VM's name or its opaque id; with ``ref="latest"`` it narrows to that VM.
    """
    if as_of is not None:
        if ref not in (None, "latest"):
            raise UsageError("a restore point id and --as-of were both given", "give one of them")
        if vm is None:
            raise UsageError("--as-of needs the VM it applies to", "add --vm NAME")
        when = as_of if as_of.tzinfo else as_of.replace(tzinfo=timezone.utc)
        candidates = [p for p in _points_of(repo, vm) if p.created <= when]
        if not candidates:
            raise RestorePointNotFoundError(
                f"VM {vm!r} has no restore point at or before {when.isoformat()}",
                "list the points with `vmpump list`",
            )
        return candidates[-1]
    if vm is not None and ref in (None, "latest"):
        points = _points_of(repo, vm)
        if not points:
            raise RestorePointNotFoundError(
                f"VM {vm!r} has no restore point in {repo.store.url}", "check the name with `vmpump list`"
            )
        return points[-1]
    point = repo.restore_point(ref or "latest")
    if vm is not None and vm not in (point.vm.name, point.vm.vm_id):
        raise UsageError(f"restore point {point.id} belongs to VM {point.vm.name!r}, not {vm!r}", "drop --vm")
    return point


def select_disk(point: RestorePoint, disk: str | None) -> DiskRecord:
    """A disk of ``point`` by key or label; ``None`` is allowed only for a one-disk VM."""
    if disk is None:
        if len(point.disks) == 1:
            return point.disks[0]
        keys = ", ".join(d.disk_key for d in point.disks)
        raise UsageError(
            f"VM {point.vm.name!r} has {len(point.disks)} disks ({keys})", "name one with --disk"
        )
    for d in point.disks:
        if disk in (d.disk_key, d.label):
            return d
    keys = ", ".join(d.disk_key for d in point.disks)
    raise UsageError(f"restore point {point.id} has no disk {disk!r}", f"its disks are: {keys}")


def _points_of(repo: Repository, vm: str) -> list[RestorePoint]:
    return [p for p in repo.restore_points() if vm in (p.vm.name, p.vm.vm_id)]
