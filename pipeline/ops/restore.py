"""Restore one disk, or every disk of a VM, from a restore point.

The driver reads the manifest and looks every chunk up in the index once, then splits the disk's
blocks into a few contiguous shares. For a file target each share is a Ray task pinned to this
node that reads its windows (ranged GETs grouped by pack, a couple of threads) and writes them
straight into the sparse ``.partial`` file, so block bytes never cross the Ray object store. A
stream target (HTTP PUT) needs the bytes in order in one process: the driver reads windows ahead
with a few threads and streams them, holes as zeros. Memory is bounded, whatever the disk size:
about ``threads × 2 × window_bytes`` per task (blocks plus the pack ranges they came from), twice
that in a streaming driver, which reads up to ``2 × threads`` windows ahead.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from pipeline.engine.dedup import RepoLocation
from pipeline.ops.errors import RestoreError
from pipeline.ops.parallel import ordered_bounded, run_bounded, run_tasks
from pipeline.ops.reader import fetch_blocks, plan_reads, table_reads
from pipeline.ops.targets import FileTarget, RandomAccessTarget, RestoreTarget, StreamTarget
from pipeline.store.restore_point import DiskRecord, RestorePoint

log = logging.getLogger(__name__)
MiB = 1 << 20


@dataclass(frozen=True)
class RestoreTuning:
    tasks: int = 2  # Ray tasks per disk (file targets)
    threads: int = 2  # window readers per task (or in the driver, for a stream)
    window_bytes: int = (
        64 * MiB
    )  # disk bytes one reader fetches and writes at a time (S3: fewer, longer GETs)
    cpus_per_task: float = 1.0


@dataclass(frozen=True)
class RestoreResult:
    point_id: str
    vm: str
    disk_key: str
    target: str
    capacity: int
    stored_bytes: int  # bytes of non-zero blocks written
    chunks: int
    gets: int
    wall_s: float

    @property
    def mb_per_s(self) -> float:
        """Disk bytes restored per second (holes included: what a user waits for), in MiB/s."""
        return self.capacity / MiB / max(self.wall_s, 1e-9)


def restore_disk(
    location: RepoLocation,
    point: RestorePoint,
    disk: DiskRecord,
    target: RestoreTarget,
    tuning: RestoreTuning = RestoreTuning(),
) -> RestoreResult:
    """Restore ``disk`` of ``point`` to ``target``; verified chunk by chunk, complete or not at all.

    With Ray initialized the shares run as Ray tasks on this node (the first in this process);
    without, one after another in this process.
    """
    started = time.perf_counter()
    repo = location.open()
    manifest = repo.read_manifest(disk.manifest_key)
    plan = plan_reads(repo, manifest, point.id)
    window_rows = max(1, tuning.window_bytes // manifest.block_size)
    if hasattr(target, "open_writer"):
        gets = _restore_random_access(
            location, point.id, plan, manifest.capacity, target, tuning, window_rows
        )  # type: ignore[arg-type]
    else:
        gets = _restore_stream(location, point.id, plan, manifest.capacity, target, tuning, window_rows)  # type: ignore[arg-type]
    result = RestoreResult(
        point.id,
        point.vm.name,
        disk.disk_key,
        target.description,
        manifest.capacity,
        manifest.stored_bytes(),
        len(manifest),
        gets,
        time.perf_counter() - started,
    )
    log.info(
        "restored %s/%s of %s to %s: %d MiB in %.2fs (%.0f MiB/s)",
        result.vm,
        result.disk_key,
        point.id,
        result.target,
        result.capacity // MiB,
        result.wall_s,
        result.mb_per_s,
    )
    return result


def restore_vm(
    location: RepoLocation,
    point: RestorePoint,
    directory: Path,
    *,
    overwrite: bool = False,
    tuning: RestoreTuning = RestoreTuning(),
) -> list[RestoreResult]:
    """Every disk of ``point`` as ``<directory>/<disk key>.img``, one after another."""
    names = [image_name(d.disk_key) for d in point.disks]
    if len(set(names)) != len(names):
        raise RestoreError(
            f"disk keys of {point.vm.name} map to clashing file names", "restore disks one by one"
        )
    return [
        restore_disk(location, point, d, FileTarget(Path(directory) / name, overwrite), tuning)
        for d, name in zip(point.disks, names, strict=True)
    ]


def image_name(disk_key: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", disk_key).strip(".") + ".img"


# ---- random access: shares as Ray tasks writing the file directly ------------------------------
def _restore_random_access(
    location: RepoLocation,
    point_id: str,
    plan: pa.Table,
    capacity: int,
    target: RandomAccessTarget,
    tuning: RestoreTuning,
    window_rows: int,
) -> int:
    target.begin(capacity)
    try:
        calls = [
            (location, point_id, target, s, window_rows, tuning.threads)
            for s in _shares(plan, tuning.tasks, window_rows)
        ]
        gets = sum(
            run_tasks(restore_share, calls, cpus=tuning.cpus_per_task, on_this_node=True, first_here=True)
        )
    except BaseException:
        target.abort()
        raise
    target.commit()
    return gets


def restore_share(
    location: RepoLocation,
    point_id: str,
    target: RandomAccessTarget,
    share: pa.Table,
    window_rows: int,
    threads: int,
) -> int:
    """Read and write one contiguous share of a disk's blocks; the number of GETs it took."""
    repo = location.open()
    windows = _windows(share, window_rows)
    writer = target.open_writer()

    def one(window: pa.Table) -> int:
        blocks, gets = fetch_blocks(repo, table_reads(window), point_id)
        for offset, data in blocks:
            writer.write(offset, data)
        return gets

    try:
        return sum(run_bounded(one, windows, threads))
    finally:
        writer.close()


def _windows(table: pa.Table, window_rows: int) -> list[pa.Table]:
    # rows become Python objects one window at a time: a huge disk's block list stays in Arrow
    return [table.slice(i, window_rows) for i in range(0, table.num_rows, window_rows)]


def _shares(plan: pa.Table, tasks: int, window_rows: int) -> list[pa.Table]:
    rows = plan.num_rows
    if rows == 0:
        return []
    # whole windows per share, so a share's ranged GETs are as long as a lone reader's would be
    windows = -(-rows // window_rows)
    per = -(-windows // max(1, min(tasks, windows))) * window_rows
    return [plan.slice(i, per) for i in range(0, rows, per)]


# ---- stream: ordered windows read ahead in this process -----------------------------------------
def _restore_stream(
    location: RepoLocation,
    point_id: str,
    plan: pa.Table,
    capacity: int,
    target: StreamTarget,
    tuning: RestoreTuning,
    window_rows: int,
) -> int:
    repo = location.open()
    windows = _windows(plan, window_rows)
    gets = [0]

    def stream() -> Iterator[bytes | memoryview]:
        zeros = memoryview(bytes(4 * MiB))
        pos = 0
        for blocks, n in ordered_bounded(
            lambda w: fetch_blocks(repo, table_reads(w), point_id), windows, tuning.threads
        ):
            gets[0] += n
            for offset, data in blocks:
                while pos < offset:  # a hole: zeros, in pieces
                    step = min(len(zeros), offset - pos)
                    yield zeros[:step]
                    pos += step
                yield data
                pos = offset + len(data)
        while pos < capacity:
            step = min(len(zeros), capacity - pos)
            yield zeros[:step]
            pos += step

    target.send(capacity, stream())
    return gets[0]
