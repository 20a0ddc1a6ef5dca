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


DISK_COLUMNS = (
    "capacity", "full_read", "full_read_reason", "bytes_read", "blocks_read", "zero_blocks", "dedup_blocks",
    "new_chunks", "new_bytes", "stored_bytes", "packs", "guard_sampled", "guard_mismatches", "healed_blocks", "peak_rss_growth",
)  # fmt: skip


REPORT_KEYS = (
    "run_id",
    "job",
    "finished",
    "vm",
    "status",
    "error",
    "consistency",
    "restore_point",
    "vm_wall_s",
)


def run_report_table(job_name: str, summary: RunSummary) -> pa.Table:
    """One row per disk (a failed VM without disk results gets one row of its own)."""
    finished = datetime.now(timezone.utc)
    rows: list[dict] = []
    for vm in summary.outcomes:
        base = {
            "run_id": summary.run_id,
            "job": job_name,
            "finished": finished,
            "vm": vm.name,
            "status": "failed" if vm.error else "ok",
            "error": vm.error,
            "consistency": vm.consistency,
            "restore_point": vm.point_id,
            "vm_wall_s": vm.wall_s,
        }
        if not vm.disks:
            rows.append({**base, "disk": None})
        for d in vm.disks:
            rows.append({
                **base,
                "disk": d.disk_key,
                **{c: getattr(d, c) for c in DISK_COLUMNS},
                "disk_wall_s": d.wall_s,
                **{f"busy_{s}_s": d.stats.busy_s.get(s, 0.0) for s in STAGES},
            })  # fmt: skip
    columns = [*REPORT_KEYS, "disk", *DISK_COLUMNS, "disk_wall_s", *(f"busy_{s}_s" for s in STAGES)]
    return pa.table({c: [r.get(c) for r in rows] for c in columns})


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


def measured_change_rates(repo: Repository) -> dict[str, float]:
    """Per VM name: the mean share of its disks read by incremental runs (what changes a night)."""
    table = read_run_reports(repo)
    if table is None:
        return {}
    sums: dict[str, list[float]] = {}
    for row in table.select(["vm", "status", "full_read", "bytes_read", "capacity"]).to_pylist():
        if row["status"] == "ok" and row["full_read"] is False and row["capacity"]:
            acc = sums.setdefault(row["vm"], [0.0, 0.0])
            acc[0] += row["bytes_read"]
            acc[1] += row["capacity"]
    return {vm: read / cap for vm, (read, cap) in sums.items() if cap}
