"""Backup benchmarks (issue 4), each printed as a ratio against a baseline measured in this run.

  1. full backup of a 2 GiB mixed image vs restic and borg (fixed chunker) on the same file, and
     vs the machine's 2-core hash + compress ceiling on the same data;
  2. an incremental with 1% of blocks changed vs the full of the same disk;
  3. peak memory of a disk task for a 1 GiB vs an 8 GiB disk;
  4. backup to S3 (moto server on loopback) vs a plain boto3 PUT loop at the same concurrency.

Run: .venv/bin/python bench/backup_bench.py [full|incremental|memory|s3 ...] [--size-mib N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ray
from common import (
    GiB,
    MiB,
    borg_backup_s,
    ceiling_mb_s,
    ensure_peers,
    job,
    mixed_disk,
    moto_server,
    plan,
    restic_backup_s,
    start_ray,
    timed_backup,
    warm,
    write_image,
)

from pipeline.engine.disk_task import UPLOADS_IN_FLIGHT
from pipeline.source.image import ImageFile
from pipeline.store.backend import open_store
from pipeline.store.repository import Repository


def new_repo(workdir: Path, name: str) -> str:
    url = f"file://{workdir}/{name}"
    Repository.init(open_store(url))
    return url


def bench_full(workdir: Path, size: int) -> None:
    ensure_peers()
    image = write_image(mixed_disk(size), workdir / "disk.img")
    warm(image)
    ceiling = ceiling_mb_s(image)
    start_ray()
    url = new_repo(workdir, "vmpump-full")
    warm(image)
    wall, summary = timed_backup(job(url), [plan("full", ImageFile(str(image)), size)])
    ours = size / MiB / wall
    warm(image)
    restic = size / MiB / restic_backup_s(image, workdir)
    warm(image)
    borg = size / MiB / borg_backup_s(image, workdir)
    t = summary.totals()
    disk = summary.outcomes[0].disks[0]
    phases = ", ".join(f"{k} {v:.2f}s" for k, v in summary.phases.items())
    print(f"[full] where the time went: {phases}; the disk task itself {disk.wall_s:.2f}s")
    print(
        f"[full] {size // MiB} MiB image: vmpump {ours:.0f} MB/s, restic {restic:.0f} MB/s, "
        f"borg(fixed) {borg:.0f} MB/s, ceiling {ceiling:.0f} MB/s; stored {t['stored_bytes'] / MiB:.0f} MiB"
    )
    print(f"[full] ratio vmpump/restic = {ours / restic:.2f}x  (target >= 2)")
    print(f"[full] ratio vmpump/borg   = {ours / borg:.2f}x")
    print(f"[full] ratio vmpump/ceiling = {ours / ceiling:.0%}  (target >= 80%)")


def bench_incremental(workdir: Path, size: int) -> None:
    start_ray()
    url = new_repo(workdir, "vmpump-incr")
    cfg = job(url)
    disk = mixed_disk(size, seed=3, change_rate=0.01)
    full_wall, full = timed_backup(cfg, [plan("incr", disk, size)])
    repo = Repository.open(open_store(url))
    (point,) = repo.restore_points()
    d = point.disks[0]
    incr_wall, incr = timed_backup(
        cfg, [plan("incr", disk.at_generation(1), size, (d.change_id, d.manifest_key))]
    )
    share = incr.totals()["bytes_read"] / max(1, full.totals()["bytes_read"])
    phases = ", ".join(f"{k} {v:.2f}s" for k, v in incr.phases.items())
    disk_wall = incr.outcomes[0].disks[0].wall_s
    print(f"[incremental] where the incremental's time went: {phases}; the disk task itself {disk_wall:.2f}s")
    print(
        f"[incremental] full {full_wall:.2f}s, incremental {incr_wall:.2f}s reading {share:.1%} of the full's bytes"
    )
    print(f"[incremental] ratio incremental/full wall = {incr_wall / full_wall:.1%}  (target <= 5%)")


def bench_memory(workdir: Path, sizes: tuple[int, int] = (1 * GiB, 8 * GiB)) -> None:
    peaks = []
    for size in sizes:
        start_ray()  # a fresh worker process per size: its peak is this disk's alone
        url = new_repo(workdir, f"vmpump-mem-{size // GiB}")
        _, summary = timed_backup(job(url), [plan("mem", mixed_disk(size, seed=5), size)])
        peaks.append(summary.outcomes[0].disks[0].peak_rss_growth)
        print(f"[memory] {size // GiB} GiB disk: disk task peak RSS growth {peaks[-1] / MiB:.0f} MiB")
    print(
        f"[memory] ratio peak({sizes[1] // GiB} GiB)/peak({sizes[0] // GiB} GiB) = {peaks[1] / peaks[0]:.2f}  (target <= 1.2)"
    )


def bench_s3(workdir: Path, size: int) -> None:
    import boto3

    os.environ.update(
        AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1"
    )
    image = write_image(mixed_disk(size, seed=9), workdir / "s3.img")
    warm(image)
    with moto_server() as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint)
        for bucket in ("vmpump", "plain"):
            client.create_bucket(Bucket=bucket)
        start_ray()
        url = "s3://vmpump/bench"
        Repository.init(open_store(url, endpoint_url=endpoint, addressing_style="path"))
        wall, summary = timed_backup(
            job(url, endpoint_url=endpoint), [plan("s3", ImageFile(str(image)), size)]
        )
        stored = summary.totals()["stored_bytes"]
        pack = 32 * MiB
        body = os.urandom(pack)
        count = max(1, stored // pack)

        def put(i: int) -> None:
            client.put_object(Bucket="plain", Key=f"p/{i}", Body=body)

        start = time.perf_counter()
        with ThreadPoolExecutor(UPLOADS_IN_FLIGHT) as pool:
            list(pool.map(put, range(count)))
        plain_wall = time.perf_counter() - start
    ours = stored / MiB / wall
    plain = count * pack / MiB / plain_wall
    print(
        f"[s3] vmpump stored {stored / MiB:.0f} MiB in {wall:.2f}s ({ours:.0f} MB/s stored); "
        f"boto3 PUT loop {plain:.0f} MB/s at {UPLOADS_IN_FLIGHT} in flight"
    )
    print(f"[s3] ratio vmpump/boto3-loop = {ours / plain:.0%}  (target >= 90%)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("which", nargs="*", default=["full", "incremental", "memory", "s3"])
    parser.add_argument("--size-mib", type=int, default=2048, help="image size for full/incremental/s3")
    args = parser.parse_args()
    size = args.size_mib * MiB
    with tempfile.TemporaryDirectory(prefix="vmpump-bench-", dir=os.environ.get("BENCH_DIR")) as tmp:
        workdir = Path(tmp)
        for which in args.which:
            {
                "full": lambda: bench_full(workdir, size),
                "incremental": lambda: bench_incremental(workdir, size),
                "memory": lambda: bench_memory(workdir),
                "s3": lambda: bench_s3(workdir, min(size, 1 * GiB)),
            }[which]()
    if ray.is_initialized():
        ray.shutdown()


if __name__ == "__main__":
    main()
