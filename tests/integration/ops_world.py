"""Backed-up synthetic VMs for the ops tests: a repository (local or S3) with real restore points.

Plain functions, not fixtures: each test module builds the world it needs from them.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import JobConfig, parse_config
from pipeline.engine.backup import RunSummary, run_backup
from pipeline.engine.dedup import RepoLocation
from pipeline.engine.plans import synthetic_disk, synthetic_plans
from pipeline.store.backend import open_store
from pipeline.store.repository import Repository

MiB = 1 << 20
# Small packs so a disk spans several of them; change_rate high so an incremental changes plenty.
PACK_SIZE = 2 * MiB
DISKS = """
  - {vm: vm-a, disk: disk0, size: 12MiB, seed: 11, change_rate: 0.3}
  - {vm: vm-a, disk: disk1, size: 5MiB, seed: 12, change_rate: 0.3}
  - {vm: vm-b, disk: disk0, size: 6MiB, seed: 13, change_rate: 0.3}
"""


def new_location(kind: str, tmp_path: Path, s3_endpoint: str = "", s3_url: str = "") -> RepoLocation:
    """An initialised, empty repository: ``local`` in ``tmp_path`` or ``s3`` in a fresh bucket."""
    if kind == "local":
        location = RepoLocation((tmp_path / "repo").as_uri())
    else:
        location = RepoLocation(s3_url, endpoint_url=s3_endpoint, addressing_style="path")
    store = open_store(
        location.url, endpoint_url=location.endpoint_url, addressing_style=location.addressing_style
    )
    Repository.init(store, pack_size=PACK_SIZE)
    return location


def job_for(location: RepoLocation, disks: str = DISKS) -> JobConfig:
    endpoint = (
        f', endpoint_url: "{location.endpoint_url}", addressing_style: path' if location.endpoint_url else ""
    )
    return parse_config(f"""
name: ops-test
source: synthetic
repository: {{url: "{location.url}"{endpoint}}}
placement: {{cpus_per_task: 0.5, memory_per_task: 64MiB}}
synthetic:{disks}
""")


def back_up(cfg: JobConfig, location: RepoLocation) -> RunSummary:
    """One backup run of every VM of ``cfg`` (full the first time, incremental after)."""
    summary = run_backup(cfg, synthetic_plans(cfg, location.open()))
    assert not summary.failed, [o.error for o in summary.failed]
    return summary


def source_bytes(cfg: JobConfig, vm: str, disk: str, generation: int) -> bytes:
    d = next(d for d in cfg.synthetic if d.vm == vm and d.disk == disk)
    src = synthetic_disk(d, generation).open()
    return src.read(0, src.capacity)


def make_ray_see_s3_credentials() -> None:
    """Ray workers inherit the environment of the moment Ray started. When the shared local Ray was
    started before the moto fixture set its dummy credentials, stop it so ``ray_local`` (requested
    after this) starts it again with them."""
    import os

    import ray

    import tests.fixtures.ray as ray_world

    if not ray.is_initialized():
        return
    seen = ray.get(ray.remote(num_cpus=0)(lambda: os.environ.get("AWS_ACCESS_KEY_ID")).remote())
    if seen != os.environ.get("AWS_ACCESS_KEY_ID"):
        ray_world._shutdown()
