"""``vmpump demo``: the whole product on one machine, proved byte for byte.

It starts the vCenter simulator (vcsim with CBT) with a few VMs whose disks hold data, a local Ray
and a repository (a directory, or a moto S3 server with ``--s3``), runs a full backup, changes some
blocks in the guests, runs a CBT incremental, restores both restore points of every VM and compares
them with the disks as they were. ``--synthetic`` does the same with generated disks and needs no
Go toolchain.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pipeline.config import JobConfig, load_config
from pipeline.errors import VmpumpError

MiB = 1 << 20


class DemoFailed(VmpumpError):
    exit_code = 4


def run_demo(
    console: Console, *, synthetic: bool = False, s3: bool = False, workdir: Path | None = None
) -> None:
    from pipeline.engine.backup import ensure_ray

    keep = workdir is not None
    with ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vmpump-demo-")))
        workdir.mkdir(parents=True, exist_ok=True)
        repo_url, endpoint = _repository(console, stack, workdir, s3)
        if synthetic:
            world: _World = _SyntheticWorld(workdir)
        else:
            world = stack.enter_context(_vcsim_world(console, workdir))
        job_file = world.write_job(repo_url, endpoint)
        console.print(f"job file: {job_file}")
        cfg = load_config(job_file)
        _init_repository(cfg)
        console.print("starting a local Ray (the machine is its own proxy)")
        ensure_ray(cfg)
        expected: list[dict[str, dict[str, str]]] = []

        console.rule("[bold]1. full backup")
        first = _backup(console, cfg)
        expected.append(world.digests())
        console.rule("[bold]2. the guests write; CBT tracks it")
        console.print(world.change())
        console.rule("[bold]3. incremental backup")
        second = _backup(console, cfg)
        expected.append(world.digests())
        console.rule("[bold]4. restore every restore point and compare")
        _restore_and_compare(console, cfg, workdir, [first, second], expected)
        world.check_no_snapshots(console)
        console.print("\n[bold green]demo passed[/bold green]: 2 backups, every restore byte-identical.")
        if keep and not s3:
            console.print(f"the repository stays in {workdir}: try vmpump points --repo {repo_url}")


class _World:
    def write_job(self, repo_url: str, endpoint: str | None) -> Path: ...

    def digests(self) -> dict[str, dict[str, str]]: ...  # vm → disk key → sha256 of the disk now

    def change(self) -> str: ...

    def check_no_snapshots(self, console: Console) -> None: ...


def _repo_yaml(repo_url: str, endpoint: str | None) -> str:
    if endpoint:
        return f'repository: {{url: "{repo_url}", endpoint_url: "{endpoint}", addressing_style: path}}'
    return f'repository: {{url: "{repo_url}"}}'


def _sha(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


class _SyntheticWorld(_World):
    """Generated disks; a change is the next generation of each disk."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.generation = 0

    def write_job(self, repo_url: str, endpoint: str | None) -> Path:
        path = self.workdir / "job.yaml"
        path.write_text(f"""name: demo
source: synthetic
{_repo_yaml(repo_url, endpoint)}
placement: {{cpus_per_task: 1, memory_per_task: 512MiB}}
synthetic:
  - {{vm: demo-db, disk: disk0, size: 256MiB, seed: 1, change_rate: 0.02}}
  - {{vm: demo-db, disk: disk1, size: 64MiB, seed: 2, change_rate: 0.02}}
  - {{vm: demo-web, disk: disk0, size: 128MiB, seed: 3, change_rate: 0.02}}
""")
        self.cfg = load_config(path)
        return path

    def digests(self) -> dict[str, dict[str, str]]:
        from pipeline.engine.plans import synthetic_disk

        out: dict[str, dict[str, str]] = {}
        for d in self.cfg.synthetic:
            src = synthetic_disk(d, self.generation).open()
            out.setdefault(d.vm, {})[d.disk] = _sha(src.read(0, src.capacity))
        return out

    def change(self) -> str:
        self.generation += 1
        return "every synthetic disk moves one generation on: about 2% of its 1 MiB regions change"

    def check_no_snapshots(self, console: Console) -> None:
        pass


@contextmanager
def _vcsim_world(console: Console, workdir: Path) -> Iterator[_VcsimWorld]:
    from pipeline.vsphere.sim import VcsimHarness

    console.print("building and starting the vCenter simulator (vcsim with CBT; first build about 20 s)")
    with VcsimHarness(hosts=2, datastores=2, vms=3, disk_mb=64, cbt_page_bytes=8 * MiB) as sim:
        console.print(f"vCenter simulator at {sim.url.split('@')[-1]} with VMs {', '.join(sim.vm_names())}")
        yield _VcsimWorld(sim, workdir)


class _VcsimWorld(_World):
    """Three VMs: two share an 'OS image' (deduplicated), one is mostly empty."""

    def __init__(self, sim, workdir: Path) -> None:  # noqa: ANN001 - VcsimHarness
        self.sim, self.workdir = sim, workdir
        self.rng = random.Random(2026)
        names = sim.vm_names()
        base = [(o * MiB, self.rng.randbytes(MiB)) for o in range(0, 24, 2)]  # the shared OS image
        text = (b"log line: user logged in from 10.0.0.%d\n" * 30000)[: 4 * MiB]
        sim.write_disk_many(names[0], 0, [*base, (32 * MiB, text), (40 * MiB, self.rng.randbytes(6 * MiB))])
        sim.write_disk_many(names[1], 0, [*base, (48 * MiB, self.rng.randbytes(3 * MiB))])
        sim.write_disk_many(names[2], 0, [(MiB, self.rng.randbytes(512 << 10))])
        sim.set_tools_running(names[0], True, "linuxGuest")
        sim.set_tools_running(names[1], True, "windowsGuest")

    def write_job(self, repo_url: str, endpoint: str | None) -> Path:
        os.environ["VMPUMP_DEMO_VC_PASSWORD"] = self.sim.password
        path = self.workdir / "job.yaml"
        path.write_text(f"""name: demo
vcenter:
  host: "{self.sim.host}"
  port: {self.sim.port}
  protocol: http            # the simulator; a real vCenter is https with TLS verification
  user: {self.sim.user}
  password_env: VMPUMP_DEMO_VC_PASSWORD
{_repo_yaml(repo_url, endpoint)}
backup: {{quiesce: prefer, cbt_guard_share: 0.01}}
placement: {{cpus_per_task: 1, memory_per_task: 512MiB}}
""")
        return path

    def digests(self) -> dict[str, dict[str, str]]:
        return {
            vm: {str(d.key): _sha(d.flat_path.read_bytes()) for d in self.sim.disks[vm]}
            for vm in self.sim.vm_names()
        }

    def change(self) -> str:
        names = self.sim.vm_names()
        self.sim.write_disk_many(
            names[0], 0, [(o * MiB + 4096, self.rng.randbytes(8192)) for o in (3, 17, 41)]
        )
        self.sim.write_disk(names[2], 0, 20 * MiB, self.rng.randbytes(MiB))
        return f"{names[0]} rewrote 3 small areas, {names[2]} wrote 1 MiB, {names[1]} did nothing"

    def check_no_snapshots(self, console: Console) -> None:
        from pipeline.vsphere.connection import VsphereEndpoint, connect
        from pipeline.vsphere.inventory import load_inventory

        s = self.sim
        endpoint = VsphereEndpoint(s.host, s.user, s.password, port=s.port, protocol=s.protocol)
        with connect(endpoint) as conn:
            left = [(vm.name, sn.name) for vm in load_inventory(conn).vms for sn in vm.snapshots]
        if left:
            raise DemoFailed(f"snapshots left behind: {left}", "this is a bug: report it")
        console.print("no snapshot left on any VM")


def _repository(console: Console, stack: ExitStack, workdir: Path, s3: bool) -> tuple[str, str | None]:
    if not s3:
        return f"file://{workdir}/repository", None
    try:
        import boto3
        from moto.server import ThreadedMotoServer
    except ImportError:
        raise DemoFailed("--s3 needs moto", "install the test extras: pip install -e '.[test]'") from None
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "demo")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "demo")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # not a line per S3 request on the terminal
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    stack.callback(server.stop)
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="vmpump-demo")
    console.print(f"S3 server (moto) at {endpoint}, bucket vmpump-demo")
    return "s3://vmpump-demo/repo", endpoint


def _init_repository(cfg: JobConfig) -> None:
    from pipeline.engine.backup import location_of
    from pipeline.store.repository import Repository

    Repository.init(
        location_of(cfg).store(),
        block_size=cfg.backup.block_size,
        compression_level=cfg.backup.compression_level,
        pack_size=cfg.backup.pack_size,
    )


def _backup(console: Console, cfg: JobConfig):  # noqa: ANN202 - RunSummary
    from pipeline.engine.backup import location_of, new_run_id, run_backup
    from pipeline.engine.console import BackupProgress, print_summary
    from pipeline.engine.plans import latency_source_of, open_plans

    repo = location_of(cfg).open()
    run_id = new_run_id()
    with open_plans(cfg, repo, run_id) as plans, BackupProgress(console, plans) as progress:
        summary = run_backup(
            cfg, plans, on_progress=progress.advance, run_id=run_id, latency_source=latency_source_of(cfg)
        )
    print_summary(console, summary)
    if summary.failed:
        raise DemoFailed(f"backup of {summary.failed[0].name} failed: {summary.failed[0].error}", "see above")
    return summary


def _restore_and_compare(console: Console, cfg: JobConfig, workdir: Path, runs: list, expected: list) -> None:  # noqa: ANN001
    from pipeline.engine.backup import location_of
    from pipeline.ops.restore import image_name, restore_vm

    location = location_of(cfg)
    repo = location.open()
    table = Table("backup", "vm", "disk", "restore point", "restored", "MiB/s", "identical")
    bad = []
    for n, (summary, digests) in enumerate(zip(runs, expected, strict=True), start=1):
        for outcome in summary.outcomes:
            point = repo.restore_point(outcome.point_id)
            target = workdir / "restored" / point.id[:12]
            for result in restore_vm(location, point, target, overwrite=True):
                data = (target / image_name(result.disk_key)).read_bytes()
                same = _sha(data) == digests[point.vm.name][result.disk_key]
                bad += [] if same else [(point.vm.name, result.disk_key, n)]
                table.add_row(
                    "full" if n == 1 else "incremental", point.vm.name, result.disk_key, point.id[:12],
                    f"{len(data) / MiB:.0f} MiB", f"{result.mb_per_s:.0f}",
                    "[green]yes[/green]" if same else "[red]NO[/red]",
                )  # fmt: skip
    console.print(table)
    if bad:
        raise DemoFailed(f"restored disks differ from the source: {bad}", "this is a bug: report it")
