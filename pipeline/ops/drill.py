"""Restore drills: restore a sample of VMs to scratch space, check every restored disk against its
manifest, and record how long each VM took in ``reports/drill-<time>-<id>.parquet`` (FORMAT.md),
so the recovery-time objective is measured, not guessed.
"""

from __future__ import annotations

import io
import logging
import os
import random
import secrets
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.engine.dedup import RepoLocation
from pipeline.errors import UsageError, VmpumpError
from pipeline.ops.restore import RestoreTuning, image_name, restore_vm
from pipeline.store.chunks import is_all_zero
from pipeline.store.manifest import DiskManifest
from pipeline.store.repository import Repository
from pipeline.store.restore_point import RestorePoint

log = logging.getLogger(__name__)
DRILL_PREFIX = "reports/drill-"
MiB = 1 << 20
DRILL_SCHEMA = pa.schema(
    [
        ("drill_id", pa.string()),
        ("started", pa.timestamp("us", tz="UTC")),
        ("vm", pa.string()),
        ("point_id", pa.string()),
        ("point_created", pa.timestamp("us", tz="UTC")),
        ("disks", pa.int32()),
        ("capacity_bytes", pa.int64()),
        ("stored_bytes", pa.int64()),
        ("restore_s", pa.float64()),
        ("verify_s", pa.float64()),
        ("restore_mib_s", pa.float64()),
        ("ok", pa.bool_()),
        ("error", pa.string()),
    ]
)


@dataclass(frozen=True)
class DrillRow:
    drill_id: str
    started: datetime
    vm: str
    point_id: str
    point_created: datetime
    disks: int
    capacity_bytes: int
    stored_bytes: int
    restore_s: float
    verify_s: float
    restore_mib_s: float
    ok: bool
    error: str | None


@dataclass
class DrillReport:
    drill_id: str
    started: datetime
    rows: list[DrillRow] = field(default_factory=list)
    report_key: str | None = None

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rows)

    def lines(self) -> list[str]:
        out = [f"restore drill {self.drill_id}: {len(self.rows)} VMs"]
        for r in self.rows:
            state = "ok" if r.ok else f"FAILED: {r.error}"
            out.append(
                f"  {r.vm} ({r.point_id[:8]}): {r.capacity_bytes / MiB:.0f} MiB restored in {r.restore_s:.1f}s "
                f"({r.restore_mib_s:.0f} MiB/s), checked in {r.verify_s:.1f}s — {state}"
            )
        if self.report_key:
            out.append(f"recorded in {self.report_key}")
        return out


def run_drill(
    location: RepoLocation,
    scratch: Path,
    *,
    vms: Sequence[str] | None = None,
    sample: int | None = None,
    seed: int | None = None,
    keep: bool = False,
    tuning: RestoreTuning = RestoreTuning(),
) -> DrillReport:
    """Restore the latest point of ``vms`` (names; all by default), or of ``sample`` of them picked
    at random, into ``scratch``; check, time, record. A failed VM is recorded, never raised."""
    repo = location.open()
    points = _drill_points(repo, vms, sample, seed)
    started = datetime.now(timezone.utc)
    report = DrillReport(f"{started:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}", started)
    for point in points:
        report.rows.append(
            _drill_vm(location, repo, point, Path(scratch) / report.drill_id, keep, tuning, report)
        )
    report.report_key = write_drill_report(repo, report)
    return report


def _drill_points(
    repo: Repository, vms: Sequence[str] | None, sample: int | None, seed: int | None
) -> list[RestorePoint]:
    latest: dict[str, RestorePoint] = {}
    for p in repo.restore_points():  # by time: the last one wins
        latest[p.vm.vm_id] = p
    points = sorted(latest.values(), key=lambda p: p.vm.name)
    if vms:
        unknown = set(vms) - {p.vm.name for p in points} - {p.vm.vm_id for p in points}
        if unknown:
            raise UsageError(
                f"no restore points for {', '.join(sorted(unknown))}", "check the names with `vmpump list`"
            )
        points = [p for p in points if p.vm.name in vms or p.vm.vm_id in vms]
    if sample is not None and sample < len(points):
        points = sorted(random.Random(seed).sample(points, sample), key=lambda p: p.vm.name)
    if not points:
        raise UsageError("nothing to drill: the repository has no restore points", "run a backup first")
    return points


def _drill_vm(
    location: RepoLocation,
    repo: Repository,
    point: RestorePoint,
    scratch: Path,
    keep: bool,
    tuning: RestoreTuning,
    report: DrillReport,
) -> DrillRow:
    directory = scratch / image_name(point.vm.name).removesuffix(".img")
    restore_s = verify_s = 0.0
    capacity = stored = 0
    error = None
    try:
        t0 = time.perf_counter()
        results = restore_vm(location, point, directory, overwrite=True, tuning=tuning)
        restore_s = time.perf_counter() - t0
        capacity = sum(r.capacity for r in results)
        stored = sum(r.stored_bytes for r in results)
        t1 = time.perf_counter()
        for disk in point.disks:
            check_image(repo, repo.read_manifest(disk.manifest_key), directory / image_name(disk.disk_key))
        verify_s = time.perf_counter() - t1
    except VmpumpError as e:
        error = str(e)
        log.error("drill of %s failed: %s", point.vm.name, error)
    finally:
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)
    return DrillRow(
        report.drill_id,
        report.started,
        point.vm.name,
        point.id,
        point.created,
        len(point.disks),
        capacity,
        stored,
        restore_s,
        verify_s,
        capacity / MiB / restore_s if restore_s else 0.0,
        error is None,
        error,
    )


class DrillMismatchError(VmpumpError):
    """A restored image does not match its manifest."""


def check_image(repo: Repository, manifest: DiskManifest, path: Path) -> None:
    """Re-read a restored image: every stored block hashes to its chunk id, every hole is zeros."""
    if path.stat().st_size != manifest.capacity:
        raise DrillMismatchError(
            f"{path} is {path.stat().st_size} bytes, not {manifest.capacity}", "restore again"
        )
    stored = {offset: cid for offset, _length, cid in manifest.blocks()}
    fd = os.open(path, os.O_RDONLY)
    try:
        for offset in range(0, manifest.capacity, manifest.block_size):
            data = os.pread(fd, min(manifest.block_size, manifest.capacity - offset), offset)
            cid = stored.get(offset)
            if cid is None:
                good = is_all_zero(data)
            else:
                # a chunk longer or shorter than its block (a resized disk) is cut or padded on
                # restore, so its hash cannot match: such a block is not checked here
                good = repo.chunk_id(data) == cid or _resized(repo, cid, len(data))
            if not good:
                raise DrillMismatchError(
                    f"block at {offset} of {path} does not match the manifest of {manifest.disk_key}",
                    "the restore is wrong; run `vmpump verify --full`",
                )
    finally:
        os.close(fd)


def _resized(repo: Repository, chunk_id: bytes, length: int) -> bool:
    entry = repo.lookup(chunk_id)
    return entry is not None and entry.raw_length != length


def write_drill_report(repo: Repository, report: DrillReport) -> str:
    table = pa.Table.from_pylist([asdict(r) for r in report.rows], schema=DRILL_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    key = f"{DRILL_PREFIX}{report.drill_id}.parquet"
    repo.store.put(key, buf.getvalue())
    return key


def read_drill_reports(repo: Repository) -> pa.Table | None:
    """Every drill's rows, oldest first (None when no drill ran yet)."""
    keys = repo.store.list_keys(DRILL_PREFIX)
    if not keys:
        return None
    return pa.concat_tables([pq.read_table(io.BytesIO(repo.store.get(k))) for k in keys])
