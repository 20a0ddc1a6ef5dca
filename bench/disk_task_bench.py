"""One disk task in this process (no Ray task around it), on a generated image: its speed as a
ratio of the hash + compress ceiling on the same data, and the busy time of every stage.

Run: .venv/bin/python bench/disk_task_bench.py [--size-mib 2048]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from common import MiB, ceiling_mb_s, mixed_disk, start_ray, warm, write_image

from pipeline.engine.dedup import DedupIndex, RepoLocation
from pipeline.engine.disk_task import DiskJob, backup_disk
from pipeline.source.image import ImageFile
from pipeline.store.backend import open_store
from pipeline.store.repository import Repository


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=2048)
    size = parser.parse_args().size_mib * MiB
    with tempfile.TemporaryDirectory(prefix="vmpump-bench-", dir=os.environ.get("BENCH_DIR")) as tmp:
        work = Path(tmp)
        image = write_image(mixed_disk(size), work / "disk.img")
        warm(image)
        ceiling = ceiling_mb_s(image)
        start_ray()
        url = f"file://{work}/repo"
        Repository.init(open_store(url))
        location = RepoLocation(url)
        index = DedupIndex.start(location)
        index.size()  # the shard is loaded before the clock starts: this measures the task alone
        warm(image)
        cpu, start = _cpu_s(), time.perf_counter()
        result = backup_disk(
            DiskJob("bench", "bench", "disk0", "disk0", ImageFile(str(image))), location, index
        )
        wall, cpu = time.perf_counter() - start, _cpu_s() - cpu
    ours = size / MiB / wall
    busy = ", ".join(f"{k} {v:.2f}s" for k, v in result.stats.busy_s.items())
    print(
        f"[disk task] {size // MiB} MiB in {wall:.2f}s = {ours:.0f} MB/s, {cpu / wall:.2f} cores busy; {busy}"
    )
    print(f"[disk task] ratio disk task/ceiling = {ours / ceiling:.0%} (ceiling {ceiling:.0f} MB/s)")


if __name__ == "__main__":
    main()
