"""Shared set-up of the benchmarks: generated images, a local Ray, peers, a moto S3 server.

Every figure a benchmark prints is a ratio against a baseline measured in the same run, because
these machines are noisy; absolute MB/s are printed beside them only for orientation.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import blake3
import ray
import zstandard

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import JobConfig, parse_config  # noqa: E402
from pipeline.engine.backup import PreparedVm, RunSummary, VmPlan, run_backup  # noqa: E402
from pipeline.engine.disk_task import DiskJob, SourceSpec  # noqa: E402
from pipeline.engine.placement import proxy_resources  # noqa: E402
from pipeline.engine.plans import no_preparation  # noqa: E402
from pipeline.source.synthetic import SyntheticDisk  # noqa: E402

MiB = 1 << 20
GiB = 1 << 30


def mixed_disk(size: int, seed: int = 1, change_rate: float = 0.01) -> SyntheticDisk:
    """The issue's mix: 30% zeros, 30% compressible, 30% random, 10% duplicates."""
    return SyntheticDisk(
        size=size,
        seed=seed,
        zero_share=0.3,
        duplicate_share=0.1,
        compressible_share=0.3,
        change_rate=change_rate,
    )


def write_image(disk: SyntheticDisk, path: Path) -> Path:
    """Write the disk as a plain (non-sparse) file: every tool then reads every byte."""
    src = disk.open()
    with open(path, "wb") as f:
        for off in range(0, disk.size, 8 * MiB):
            f.write(src.read(off, min(8 * MiB, disk.size - off)))
    return path


def warm(path: Path) -> None:
    """Read a file once so every tool that follows reads it from the page cache."""
    with open(path, "rb") as f:
        while f.read(16 * MiB):
            pass


def busy_core_s() -> float:
    """CPU seconds every process of this machine has spent so far (from /proc/stat)."""
    with open("/proc/stat") as f:
        ticks = [int(v) for v in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """Wall time and machine-wide busy CPU seconds of a ``with`` block."""

    def __enter__(self) -> CpuMeter:
        self.wall, self.cpu = time.perf_counter(), busy_core_s()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, busy_core_s() - self.cpu


def ceiling(path: Path, block_size: int = MiB, level: int = 3, threads: int = 2) -> tuple[float, float]:
    """The machine's hash + zero check + compress ceiling over the same data on ``threads`` cores:
    MB/s, and the CPU seconds it took. The textbook work: BLAKE3 of every block, plain zstd at the
    repository's level of every non-zero one (the data is in memory; nothing is read or written).
    vmpump's own shortcuts (no hash for zero blocks, no compression of duplicates or of blocks
    whose samples do not compress) are not in it: they are part of what the pipeline is measured on."""
    data = memoryview(path.read_bytes())
    zero = blake3.blake3(bytes(block_size)).digest()
    local = threading.local()

    def work(off: int) -> None:
        block = data[off : off + block_size]
        if blake3.blake3(block).digest() != zero:
            compressor = getattr(local, "zstd", None)
            if compressor is None:
                compressor = local.zstd = zstandard.ZstdCompressor(level=level, write_content_size=True)
            compressor.compress(block)

    with ThreadPoolExecutor(threads) as pool, CpuMeter() as meter:
        list(pool.map(work, range(0, len(data), block_size)))
    return len(data) / MiB / meter.wall, meter.cpu


def ceiling_mb_s(path: Path, block_size: int = MiB, level: int = 3, threads: int = 2) -> float:
    return ceiling(path, block_size, level, threads)[0]


def job(url: str, *, endpoint_url: str | None = None, name: str = "bench") -> JobConfig:
    endpoint = f', endpoint_url: "{endpoint_url}", addressing_style: path' if endpoint_url else ""
    return parse_config(f"""
name: {name}
source: synthetic
repository: {{url: "{url}"{endpoint}}}
placement: {{cpus_per_task: 1, memory_per_task: 512MiB}}
synthetic: [{{vm: unused, size: 1MiB}}]
""")


def plan(
    vm: str, source: SourceSpec, capacity: int, previous: tuple[str | None, str | None] = (None, None)
) -> VmPlan:
    since, manifest = previous
    job_ = DiskJob(vm, f"bench:{vm}", "disk0", "disk0", source, since=since, previous_manifest=manifest)
    return VmPlan(
        vm,
        f"bench:{vm}",
        ("disk0",),
        capacity,
        manifest is not None,
        partial(no_preparation, PreparedVm((job_,), "crash")),
        "bench",
    )


def timed_backup(cfg: JobConfig, plans: list[VmPlan]) -> tuple[float, RunSummary]:
    start = time.perf_counter()
    summary = run_backup(cfg, plans)
    wall = time.perf_counter() - start
    if summary.failed:
        raise SystemExit(f"backup failed: {summary.failed[0].error}")
    return wall, summary


def run_timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(
        cmd, check=True, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    return time.perf_counter() - start


def ensure_peers() -> None:
    """restic and borg from Debian, installed here if missing."""
    missing = [p for p, exe in (("restic", "restic"), ("borgbackup", "borg")) if shutil.which(exe) is None]
    if missing:
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True)


def restic_backup_s(image: Path, workdir: Path) -> float:
    repo = workdir / "restic"
    env = {"RESTIC_PASSWORD": "bench", "RESTIC_REPOSITORY": str(repo), "GOMAXPROCS": "2"}
    subprocess.run(["restic", "init"], check=True, env={**os.environ, **env}, capture_output=True)
    return run_timed(["restic", "backup", "--no-cache", str(image)], env)


def borg_backup_s(image: Path, workdir: Path) -> float:
    repo = workdir / "borg"
    env = {"BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK": "yes", "BORG_RELOCATED_REPO_ACCESS_IS_OK": "yes"}
    subprocess.run(
        ["borg", "init", "-e", "none", str(repo)], check=True, env={**os.environ, **env}, capture_output=True
    )
    # borg's docs advise the fixed chunker for block devices and disk images
    return run_timed(
        ["borg", "create", "--chunker-params", "fixed,4194304", "-C", "zstd,3", f"{repo}::bench", str(image)],
        env,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """A moto S3 server in its own process on loopback (a real HTTP endpoint)."""
    port = free_port()
    # moto spills every object over 5 MiB to a temporary file on this machine's disk: a second
    # copy through the page cache that costs this machine's two cores more than the upload itself.
    # A real S3 endpoint stores objects elsewhere; keep them in moto's memory (both the PUT-loop
    # baseline and vmpump write to this same server).
    env = {**os.environ, "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(256 * MiB)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def start_ray() -> None:
    """A fresh local Ray whose node is a 2-slot proxy (a new worker process for every benchmark)."""
    if ray.is_initialized():
        ray.shutdown()
    ray.init(
        address="local",
        num_cpus=2,
        resources=proxy_resources(2),
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=256 * MiB,
    )
