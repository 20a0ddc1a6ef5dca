"""A local repository whose file system fills up mid-backup: one line with the cause and a hint,
no restore point, and nothing that looks complete."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.store.backend import open_store
from pipeline.store.repository import Repository
from tests.integration.test_cli_vsphere import vmpump

pytestmark = pytest.mark.integration


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 6 MiB tmpfs (the test needs root, as CI has; elsewhere it is skipped)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_repository_disk_fails_in_one_line_and_commits_nothing(small_fs: Path, tmp_path: Path):
    job = tmp_path / "job.yaml"
    job.write_text(f"""
name: full-disk
source: synthetic
repository: {{url: "file://{small_fs}/repo"}}
placement: {{cpus_per_task: 0.5, memory_per_task: 128MiB}}
synthetic:
  - {{vm: vm-big, disk: disk0, size: 24MiB, seed: 8, zero_share: 0.0, duplicate_share: 0.0, compressible_share: 0.0}}
""")
    assert vmpump("init", "-c", str(job)).returncode == 0
    run = vmpump("backup", "-c", str(job))
    assert run.returncode != 0
    output = run.stdout + run.stderr
    assert "Traceback" not in output
    assert "no space left on the file system" in output and "free space" in output, output
    assert not Repository.open(open_store(f"file://{small_fs}/repo")).restore_points()
