"""Restore and verify benchmarks (issue 5), printed as ratios against the backup of the same disk
measured in the same run.

  1. back up a mixed synthetic disk (written to an image file and read from the page cache, so the
     backup figure is the pipeline's, not the generator's) on a local Ray;
  2. restore it to a sparse image file on Ray: restore MB/s vs backup MB/s (target >= 1.5x);
  3. verify quick and full of the repository: MB/s of disk covered, vs backup.

Run: .venv/bin/python bench/restore_bench.py [--size-mib N] [--tasks N] [--s3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

import ray
from common import MiB, job, mixed_disk, moto_server, plan, start_ray, timed_backup, warm, write_image

from pipeline.engine.dedup import RepoLocation
from pipeline.ops.restore import RestoreTuning, restore_disk
from pipeline.ops.targets import FileTarget
from pipeline.ops.verify import verify_repository
from pipeline.source.image import ImageFile
from pipeline.store.backend import open_store
from pipeline.store.repository import Repository


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--tasks", type=int, default=2, help="restore tasks per disk")
    parser.add_argument("--threads", type=int, default=RestoreTuning.threads, help="readers per task")
    parser.add_argument("--window-mib", type=int, default=RestoreTuning.window_bytes // MiB)
    parser.add_argument("--s3", action="store_true", help="repository on a local moto S3 server")
    args = parser.parse_args()
    size = args.size_mib * MiB
    if args.s3:  # before Ray starts, so its workers inherit them
        os.environ.update(
            AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
        )
    start_ray()
    with contextlib.ExitStack() as stack:
        work = Path(
            stack.enter_context(
                tempfile.TemporaryDirectory(prefix="vmpump-bench-", dir=os.environ.get("BENCH_DIR"))
            )
        )
        image = write_image(mixed_disk(size, seed=21), work / "disk.img")
        if args.s3:
            import boto3

            endpoint = stack.enter_context(moto_server())
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="vmpump")
            url, location = "s3://vmpump/bench", RepoLocation("s3://vmpump/bench", endpoint, None, "path")
        else:
            endpoint, url = None, f"file://{work}/repo"
            location = RepoLocation(url)
        Repository.init(open_store(url, endpoint_url=endpoint, addressing_style="path"))
        warm(image)
        backup_wall, summary = timed_backup(
            job(url, endpoint_url=endpoint), [plan("bench", ImageFile(str(image)), size)]
        )
        repo = location.open()
        (point,) = repo.restore_points()
        stored = summary.totals()["stored_bytes"]

        target = FileTarget(work / "restored.img")
        result = restore_disk(
            location,
            point,
            point.disks[0],
            target,
            RestoreTuning(tasks=args.tasks, threads=args.threads, window_bytes=args.window_mib * MiB),
        )
        if target.path.read_bytes() != image.read_bytes():
            raise SystemExit("restored image differs from the source")
        quick_start = time.perf_counter()
        quick = verify_repository(location, mark=False)
        quick_wall = time.perf_counter() - quick_start
        full_start = time.perf_counter()
        full = verify_repository(location, full=True, mark=False)
        full_wall = time.perf_counter() - full_start
        if not (quick.ok and full.ok):
            raise SystemExit("verify found problems in a fresh repository")

    backup = size / MiB / backup_wall
    restore = result.mb_per_s
    print(
        f"[disk] {'s3 (moto) ' if args.s3 else 'local '}repository, {size // MiB} MiB mixed disk, {stored / MiB:.0f} MiB stored in "
        f"{summary.totals()['packs']} packs, {result.chunks} chunks"
    )
    print(f"[backup]  {backup_wall:.2f}s  {backup:.0f} MiB/s of disk")
    print(
        f"[restore] {result.wall_s:.2f}s  {restore:.0f} MiB/s of disk, {result.gets} ranged GETs, "
        f"{args.tasks} tasks"
    )
    print(f"[restore] ratio restore/backup = {restore / backup:.2f}x  (target >= 1.5x)")
    print(
        f"[verify]  quick {quick_wall:.2f}s ({size / MiB / quick_wall:.0f} MiB/s of disk, "
        f"{quick.packs} packs), full {full_wall:.2f}s ({size / MiB / full_wall:.0f} MiB/s of disk, "
        f"{full.bytes_read / MiB / full_wall:.0f} MiB/s of packs read)"
    )
    print(
        f"[verify]  ratio full/backup = {size / full_wall / (size / backup_wall):.2f}x, "
        f"quick/backup = {backup_wall / quick_wall:.1f}x"
    )
    ray.shutdown()


if __name__ == "__main__":
    main()
