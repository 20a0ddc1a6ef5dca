"""The ``vmpump`` command line.

Every user mistake ends as ``error: <cause> — <hint>`` on stderr and a non-zero exit; a traceback
only with ``--debug``. Heavy imports (Ray, pyvmomi) happen inside the commands that need them.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from pipeline import __version__, cli_restore
from pipeline.errors import UsageError, VmpumpError

if TYPE_CHECKING:
    from pipeline.store.backend import ObjectStore

app = typer.Typer(
    name="vmpump",
    help="Image-level backup of VMware vSphere VMs to object storage, as a Ray pipeline.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(width=None if sys.stdout.isatty() else 120)  # logs and pipes get whole table rows
_state = {"debug": False}

ConfigOpt = typer.Option(None, "--config", "-c", help="job YAML file", exists=False)
RepoOpt = typer.Option(
    None, "--repo", help="repository URL (file:///path or s3://bucket/prefix); overrides the config"
)
EndpointOpt = typer.Option(None, "--endpoint-url", help="S3 endpoint URL (MinIO, Ceph RGW, ...)")
RegionOpt = typer.Option(None, "--region", help="S3 region")


def _version(value: bool) -> None:
    if value:
        out.print(f"vmpump {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="show tracebacks"),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print the version"
    ),
) -> None:
    _state["debug"] = debug


def open_repository_store(
    config: Path | None, repo: str | None, endpoint_url: str | None, region: str | None
) -> ObjectStore:
    """The object store named by ``--repo`` or by the job config's repository section."""
    if repo is None and config is None:
        raise UsageError("no repository given", "pass --repo URL or --config job.yaml")
    addressing_style = None
    if repo is None:
        from pipeline.config import load_config

        cfg = load_config(config)  # type: ignore[arg-type]
        repo = cfg.repository.url
        endpoint_url = endpoint_url or cfg.repository.endpoint_url
        region = region or cfg.repository.region
        addressing_style = cfg.repository.addressing_style
    from pipeline.store.backend import open_store

    return open_store(repo, endpoint_url=endpoint_url, region=region, addressing_style=addressing_style)


@app.command()
def init(
    config: Path | None = ConfigOpt,
    repo: str | None = RepoOpt,
    endpoint_url: str | None = EndpointOpt,
    region: str | None = RegionOpt,
    block_size: str = typer.Option("1MiB", help="block size, a power of two from 256KiB to 8MiB"),
    compression_level: int = typer.Option(3, help="zstd level (1-19)"),
) -> None:
    """Create a new, empty repository."""
    from pipeline.config import BackupConfig
    from pipeline.store.repository import Repository

    if config is not None:
        from pipeline.config import load_config

        backup = load_config(config).backup
    else:
        try:
            backup = BackupConfig(block_size=block_size, compression_level=compression_level)
        except ValueError as exc:
            raise UsageError(
                f"invalid option: {str(exc).splitlines()[-1].strip()}", "see vmpump init --help"
            ) from None
    store = open_repository_store(config, repo, endpoint_url, region)
    r = Repository.init(
        store,
        block_size=backup.block_size,
        compression_level=backup.compression_level,
        pack_size=backup.pack_size,
    )
    out.print(f"created repository {r.config.repo_id} (block size {r.config.block_size} bytes)")


@app.command()
def points(
    config: Path | None = ConfigOpt,
    repo: str | None = RepoOpt,
    endpoint_url: str | None = EndpointOpt,
    region: str | None = RegionOpt,
) -> None:
    """List restore points."""
    store = open_repository_store(config, repo, endpoint_url, region)
    from pipeline.store.repository import Repository

    r = Repository.open(store)
    table = Table("id", "vm", "created (UTC)", "disks", "consistency", "size")
    for p in r.restore_points():
        size = sum(d.capacity for d in p.disks)
        table.add_row(
            p.id[:12],
            p.vm.name,
            p.created.strftime("%Y-%m-%d %H:%M:%S"),
            str(len(p.disks)),
            p.consistency,
            _human(size),
        )
    out.print(table)


@app.command()
def backup(
    config: Path = typer.Option(..., "--config", "-c", help="job YAML file"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan and touch nothing"),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="join this Ray cluster (default: start a local one)"
    ),
) -> None:
    """Back up the job's VMs: full the first time, CBT-incremental after."""
    from pipeline.config import load_config
    from pipeline.engine.backup import ensure_ray, new_run_id, run_backup
    from pipeline.engine.console import BackupProgress, print_summary
    from pipeline.engine.plans import latency_source_of, open_plans
    from pipeline.store.repository import Repository

    cfg = load_config(config)
    repo = Repository.open(open_repository_store(config, None, None, None))
    run_id = new_run_id()
    with open_plans(cfg, repo, run_id) as plans:
        if not plans:
            raise UsageError(
                "the job selects no VM", "check selection.vms and selection.exclude in the job file"
            )
        if dry_run:
            _print_plan(plans)
            return
        ensure_ray(cfg, ray_address)
        with BackupProgress(out, plans) as progress:
            summary = run_backup(
                cfg, plans, on_progress=progress.advance, run_id=run_id, latency_source=latency_source_of(cfg)
            )
    print_summary(out, summary)
    if summary.failed:
        raise BackupFailed(
            f"{len(summary.failed)} of {len(summary.outcomes)} VMs failed and got no restore point",
            "see the errors above; rerun the job to retry them (uploaded data is reused)",
        )


class BackupFailed(VmpumpError):
    exit_code = 3


def _print_plan(plans: list) -> None:  # noqa: ANN001 - VmPlan
    table = Table("vm", "disks", "capacity", "kind", title="backup plan (dry run)")
    for p in plans:
        table.add_row(
            p.name, ", ".join(p.disks), _human(p.capacity), "incremental" if p.incremental else "full"
        )
    out.print(table)
    out.print(f"{len(plans)} VMs, {_human(sum(p.capacity for p in plans))} provisioned")


@app.command()
def demo(
    synthetic: bool = typer.Option(
        False, "--synthetic", help="generated disks instead of the vCenter simulator"
    ),
    s3: bool = typer.Option(
        False, "--s3", help="an S3 repository on a local moto server instead of a directory"
    ),
    workdir: Path | None = typer.Option(None, help="keep everything here (default: a temporary directory)"),
) -> None:
    """Back up, change, back up again and restore, proving every restore byte-identical."""
    from pipeline.demo import run_demo

    run_demo(out, synthetic=synthetic, s3=s3, workdir=workdir)


@app.command()
def plan(
    window: str = typer.Option("8h", help="the backup window, like 8h or 6.5h"),
    estate: Path | None = typer.Option(None, help="what-if estate YAML (see configs/estate-5000.yaml)"),
    config: Path | None = typer.Option(None, "--config", "-c", help="plan the job's real inventory instead"),
    cores_per_proxy: int = typer.Option(16, help="cores of one proxy, to count proxies"),
    change_rate: float = typer.Option(0.05, help="nightly change rate where the catalog has none"),
) -> None:
    """Size proxies for a backup window and simulate the night under the admission rules."""
    from pipeline.engine.placement import PlacementLimits
    from pipeline.ops.window import parse_window_hours, plan_window, render_window_plan

    if (estate is None) == (config is None):
        raise UsageError(
            "plan needs exactly one of --estate FILE or --config job.yaml", "see vmpump plan --help"
        )
    limits = PlacementLimits()
    if estate is not None:
        from pipeline.ops.estate import load_estate

        the_estate = load_estate(estate)
    else:
        the_estate, limits = _estate_of_job(config, change_rate)  # type: ignore[arg-type]
    hours = parse_window_hours(window)
    out.print(
        render_window_plan(plan_window(the_estate, hours, limits=limits, cores_per_proxy=cores_per_proxy))
    )


def _estate_of_job(config: Path, change_rate: float):  # noqa: ANN202 - (Estate, PlacementLimits)
    """The job's VMs from vCenter, with the change rates this repository's runs measured."""
    from types import SimpleNamespace

    from pipeline.config import load_config
    from pipeline.engine.backup import placement_limits
    from pipeline.engine.report import measured_change_rates
    from pipeline.ops.estate import estate_from_inventory
    from pipeline.store.repository import Repository
    from pipeline.vsphere.inventory import load_inventory

    cfg = load_config(config)
    rates = measured_change_rates(Repository.open(open_repository_store(config, None, None, None)))
    with _vcenter(config) as conn:
        vms = [
            SimpleNamespace(
                name=vm.name,
                host=vm.host,
                disks=[SimpleNamespace(capacity_bytes=d.capacity, datastore=d.datastore) for d in vm.disks],
                change_rate=rates.get(vm.name, change_rate),
            )
            for vm in load_inventory(conn).vms
            if cfg.selection.matches(vm.name) and vm.disks
        ]
    return estate_from_inventory(vms, change_rate), placement_limits(cfg.placement)


for _command in (cli_restore.restore, cli_restore.verify, cli_restore.serve, cli_restore.drill):
    app.command()(_command)
app.command("mount", help="Alias of serve: expose a restore point over NBD to mount it.")(cli_restore.serve)


snapshots_app = typer.Typer(
    help="vmpump snapshots on the VMs: list them, hunt down orphans.", no_args_is_help=True
)
app.add_typer(snapshots_app, name="snapshots")


def _vcenter(config: Path):  # noqa: ANN202 - a pyvmomi-backed Connection
    from pipeline.config import load_config
    from pipeline.engine.vsphere_plans import endpoint_of
    from pipeline.vsphere.connection import connect

    cfg = load_config(config)
    if cfg.vcenter is None:
        raise UsageError(
            f"{config} has no vcenter section", "snapshots are a vSphere matter; use a vsphere job file"
        )
    return connect(endpoint_of(cfg.vcenter))


@snapshots_app.command("list")
def snapshots_list(config: Path = typer.Option(..., "--config", "-c", help="job YAML file")) -> None:
    """List the snapshots vmpump made that still exist."""
    from pipeline.vsphere.inventory import load_inventory
    from pipeline.vsphere.snapshots import DESCRIPTION_PREFIX, NAME_PREFIX

    table = Table("vm", "snapshot", "created (UTC)", "description")
    with _vcenter(config) as conn:
        for vm in load_inventory(conn).vms:
            for snap in vm.snapshots:
                if snap.name.startswith(NAME_PREFIX) and snap.description.startswith(DESCRIPTION_PREFIX):
                    created = snap.create_time.strftime("%Y-%m-%d %H:%M:%S") if snap.create_time else "?"
                    table.add_row(vm.name, snap.name, created, snap.description)
    out.print(table if table.row_count else "no vmpump snapshots")


@snapshots_app.command("hunt")
def snapshots_hunt(
    config: Path = typer.Option(..., "--config", "-c", help="job YAML file"),
    older_than: str = typer.Option("6h", help="only snapshots older than this (30m, 6h, 2d)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="report, remove nothing"),
) -> None:
    """Remove vmpump snapshots left behind by crashed runs."""
    from pipeline.vsphere.snapshots import hunt_orphans

    with _vcenter(config) as conn:
        found = hunt_orphans(conn, older_than=_duration(older_than), dry_run=dry_run)
    for o in found:
        out.print(f"{'removed' if o.removed else 'would remove'} {o.snapshot.name} of {o.vm_name}")
    out.print(f"{len(found)} orphaned vmpump snapshots{' (dry run)' if dry_run else ''}")


def _duration(text: str) -> timedelta:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        return timedelta(seconds=float(text[:-1]) * units[text[-1]])
    except (KeyError, ValueError, IndexError):
        raise UsageError(f"{text!r} is not a duration", "write it like 30m, 6h or 2d") from None


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def main() -> None:
    """Console entry point: run the app and turn errors into one line."""
    try:
        app(standalone_mode=False)
    except VmpumpError as exc:
        if _state["debug"]:
            raise
        Console(stderr=True).print(f"[red]error:[/red] {exc}", markup=True, highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(1)
    except Exception as exc:  # click usage errors carry their own exit code and message
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if _state["debug"]:
            raise
        Console(stderr=True).print(
            f"error: internal error {type(exc).__name__}: {exc} — rerun with --debug and report it",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )
        sys.exit(70)


if __name__ == "__main__":
    main()
