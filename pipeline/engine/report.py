"""The run report: one Parquet file per run in the repository, one row per disk.

This is the catalog the notebooks, the window planner and the bottleneck report read: what was
read, what was new, what was stored, and how long each stage was busy.
"""

from __future__ import annotations

import io
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.engine.stats import STAGES
from pipeline.store.repository import Repository

if TYPE_CHECKING:
    from pipeline.engine.backup import RunSummary

REPORT_PREFIX = "reports/"


def run_report_table(job_name: str, summary: RunSummary) -> pa.Table:
    rows: dict[str, list] = {
        k: []
        for k in (
            "run_id",
            "job",
            "finished",
            "vm",
            "disk",
            "status",
            "error",
            "consistency",
            "restore_point",
            "capacity",
            "full_read",
            "full_read_reason",
            "bytes_read",
            "zero_blocks",
            "dedup_blocks",
            "new_chunks",
            "new_bytes",
            "stored_bytes",
            "packs",
            "disk_wall_s",
            "vm_wall_s",
            *(f"busy_{s}_s" for s in STAGES),
        )
    }
    finished = datetime.now(timezone.utc)

    def add(vm, disk, **values) -> None:  # noqa: ANN001
        base = {
            "run_id": summary.run_id,
            "job": job_name,
            "finished": finished,
            "vm": vm.name,
            "disk": disk,
            "status": "failed" if vm.error else "ok",
            "error": vm.error,
            "consistency": vm.consistency,
            "restore_point": vm.point_id,
            "vm_wall_s": vm.wall_s,
        }
        for k in rows:
            rows[k].append(values.get(k, base.get(k)))

    for vm in summary.outcomes:
        if not vm.disks:
            add(vm, None)
        for d in vm.disks:
            add(
                vm,
                d.disk_key,
                capacity=d.capacity,
                full_read=d.full_read,
                full_read_reason=d.full_read_reason,
                bytes_read=d.bytes_read,
                zero_blocks=d.zero_blocks,
                dedup_blocks=d.dedup_blocks,
                new_chunks=d.new_chunks,
                new_bytes=d.new_bytes,
                stored_bytes=d.stored_bytes,
                packs=d.packs,
                disk_wall_s=d.wall_s,
                **{f"busy_{s}_s": d.stats.busy_s.get(s, 0.0) for s in STAGES},
            )
    return pa.table(rows)


def write_run_report(repo: Repository, job_name: str, summary: RunSummary) -> str:
    table = run_report_table(job_name, summary)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    key = f"{REPORT_PREFIX}{stamp}-{summary.run_id}.parquet"
    repo.store.put(key, buf.getvalue())
    return key


def read_run_reports(repo: Repository) -> pa.Table | None:
    tables = [
        pq.read_table(io.BytesIO(repo.store.get(k))) for k in sorted(repo.store.list_keys(REPORT_PREFIX))
    ]
    return pa.concat_tables(tables, promote_options="default") if tables else None
