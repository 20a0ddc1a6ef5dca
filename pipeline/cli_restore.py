"""The CLI's recovery commands: restore, verify, serve (instant access over NBD) and drill.

Registered on the main app by ``pipeline.cli``; they share its repository options and errors.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

import typer
from rich.console import Console

from pipeline.errors import UsageError, VmpumpError

console = Console(width=None if sys.stdout.isatty() else 120)
ConfigArg = typer.Option(..., "--config", "-c", help="job YAML file (names the repository)")


class DrillFailed(VmpumpError):
    exit_code = 3


def _location(config: Path, start_ray: bool = True):  # noqa: ANN202 - (JobConfig, RepoLocation)
    from pipeline.config import load_config
    from pipeline.engine.backup import ensure_ray, location_of

    cfg = load_config(config)
    location = location_of(cfg)
    location.open()  # a missing repository is one clear line, before Ray starts
    if start_ray:
        ensure_ray(cfg)
    return cfg, location


def _as_of(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"--as-of {text!r} is not a date and time", "write it like 2026-11-24T22:00"
        ) from None


def restore(
    config: Path = ConfigArg,
    point: str = typer.Option("latest", help="restore point: latest, an id or a unique id prefix"),
    vm: str | None = typer.Option(None, help="the VM (name or id); with latest or --as-of, its newest point"),
    as_of: str | None = typer.Option(
        None, "--as-of", help="the VM's newest point at or before this time (UTC)"
    ),
    disk: str | None = typer.Option(None, help="one disk (key or label); default: every disk"),
    out: Path | None = typer.Option(None, help="write the disk to this raw image file (sparse)"),
    out_dir: Path | None = typer.Option(None, help="write every disk as <disk key>.img in this directory"),
    put_url: str | None = typer.Option(None, help="PUT the disk to this URL (a datastore /folder URL)"),
    cookie: str | None = typer.Option(None, help="Cookie header for --put-url (vCenter session)"),
    overwrite: bool = typer.Option(False, help="replace existing files"),
) -> None:
    """Restore a disk or a whole VM from a restore point, every chunk verified."""
    from pipeline.ops.restore import restore_disk, restore_vm
    from pipeline.ops.select import select_disk, select_point
    from pipeline.ops.targets import FileTarget, HttpPutTarget

    targets = [t for t in (out, out_dir, put_url) if t is not None]
    if len(targets) != 1:
        raise UsageError(
            "restore needs exactly one of --out FILE, --out-dir DIR or --put-url URL", "see --help"
        )
    _, location = _location(config)
    chosen = select_point(location.open(), point, vm=vm, as_of=_as_of(as_of))
    if out_dir is not None and disk is None:
        results = restore_vm(location, chosen, out_dir, overwrite=overwrite)
    else:
        target = (
            FileTarget(out, overwrite)
            if out is not None
            else FileTarget(out_dir / f"{select_disk(chosen, disk).disk_key}.img", overwrite)  # type: ignore[operator]
            if out_dir is not None
            else HttpPutTarget(put_url, headers={"Cookie": cookie} if cookie else {})  # type: ignore[arg-type]
        )
        results = [restore_disk(location, chosen, select_disk(chosen, disk), target)]
    for r in results:
        console.print(
            f"restored {r.vm} disk {r.disk_key} of point {r.point_id[:12]} to {r.target}: "
            f"{r.capacity / 2**20:.0f} MiB in {r.wall_s:.1f}s ({r.mb_per_s:.0f} MiB/s), {r.chunks} chunks verified"
        )


def verify(
    config: Path = ConfigArg,
    full: bool = typer.Option(False, "--full", help="read and re-hash every referenced chunk"),
    no_mark: bool = typer.Option(False, "--no-mark", help="do not record damaged chunks for healing"),
) -> None:
    """Check that every restore point can be restored (quick: index and packs; --full: every byte)."""
    from pipeline.ops.verify import verify_repository

    _, location = _location(config, start_ray=full)
    report = verify_repository(location, full=full, mark=not no_mark)
    for line in report.lines():
        console.print(line, highlight=False)
    report.raise_if_damaged()


def serve(
    config: Path = ConfigArg,
    point: str = typer.Option("latest", help="restore point: latest, an id or a unique id prefix"),
    vm: str | None = typer.Option(None, help="the VM (name or id)"),
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(10809, help="TCP port (10809 is NBD's)"),
    cache_mib: int = typer.Option(64, help="chunk cache size"),
) -> None:
    """Serve a restore point's disks read-only over NBD, without restoring them first."""
    from pipeline.ops.nbd import NbdServer, point_exports
    from pipeline.ops.select import select_point

    _, location = _location(config, start_ray=False)
    repo = location.open()
    chosen = select_point(repo, point, vm=vm)
    server = NbdServer(point_exports(repo, chosen, cache_bytes=cache_mib << 20), host=host, port=port)
    console.print(f"serving {chosen.vm.name} point {chosen.id[:12]} read-only at {server.url()}")
    console.print(
        f"exports: {', '.join(d.disk_key for d in chosen.disks)}  —  try: nbdinfo --list {server.url()}"
    )
    console.print(
        "mount: nbd-client HOST PORT /dev/nbd0 -N <export> -readonly && mount -o ro,norecovery /dev/nbd0p1 /mnt"
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        server.stop()


def drill(
    config: Path = ConfigArg,
    scratch: Path = typer.Option(..., help="scratch directory for the restored disks"),
    vm: list[str] = typer.Option([], help="VMs to drill (default: all, or --sample of them)"),
    sample: int | None = typer.Option(None, help="drill this many VMs picked at random"),
    seed: int | None = typer.Option(None, help="seed of the random pick"),
    keep: bool = typer.Option(False, help="keep the restored disks"),
) -> None:
    """Restore a sample of VMs to scratch, verify them, and record the measured restore time."""
    from pipeline.ops.drill import run_drill

    _, location = _location(config)
    report = run_drill(location, scratch, vms=vm or None, sample=sample, seed=seed, keep=keep)
    for line in report.lines():
        console.print(line, highlight=False)
    if not report.ok:
        raise DrillFailed(
            "the restore drill found VMs that did not restore",
            "see the lines above; run vmpump verify --full",
        )
