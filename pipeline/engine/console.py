"""What a backup run shows on the terminal: live progress per VM and the final table."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from pipeline.engine.backup import RunSummary, VmPlan


class BackupProgress:
    """A progress bar per VM, in bytes read of its provisioned size."""

    def __init__(self, console: Console, plans: list[VmPlan]) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.tasks = {
            p.vm_id: self.progress.add_task(
                f"{p.name} ({'incr' if p.incremental else 'full'})", total=p.capacity
            )
            for p in plans
        }

    def advance(self, key: str, nbytes: int) -> None:
        vm_id = key.rsplit("/", 1)[0]
        if vm_id in self.tasks:
            self.progress.advance(self.tasks[vm_id], nbytes)

    def __enter__(self) -> BackupProgress:
        self.progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:  # the bars count provisioned bytes; CBT skipped what did not need reading
            for task in self.progress.tasks:
                self.progress.update(task.id, completed=task.total)
        self.progress.stop()


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def print_summary(console: Console, summary: RunSummary) -> None:
    table = Table("vm", "status", "consistency", "read", "new", "stored", "time", title="backup run")
    for o in summary.outcomes:
        read = sum(d.bytes_read for d in o.disks)
        new = sum(d.new_bytes for d in o.disks)
        stored = sum(d.stored_bytes for d in o.disks)
        status = f"[green]ok[/green] {o.point_id[:12]}" if o.point_id else f"[red]failed[/red]: {o.error}"
        table.add_row(
            o.name, status, o.consistency or "-", human(read), human(new), human(stored), f"{o.wall_s:.1f}s"
        )
    console.print(table)
    for o in summary.outcomes:
        for d in o.disks:
            if d.guard_mismatches:
                console.print(
                    f"[bold red]CBT was wrong[/bold red] for {o.name} {d.disk_key}: {d.full_read_reason}"
                )
            elif d.full_read and d.full_read_reason:
                console.print(f"[yellow]warning:[/yellow] {o.name} {d.disk_key}: {d.full_read_reason}")
    t = summary.totals()
    rate = t["bytes_read"] / summary.wall_s if summary.wall_s > 0 else 0.0
    console.print(
        f"read {human(t['bytes_read'])} in {summary.wall_s:.1f}s ({human(rate)}/s), "
        f"new {human(t['new_bytes'])}, stored {human(t['stored_bytes'])} in {t['packs']} packs"
        + (
            f"; {summary.recovered_chunks} chunks of an interrupted run reused"
            if summary.recovered_chunks
            else ""
        )
    )
