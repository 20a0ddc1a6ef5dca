"""Recovery through the command line, as a user runs it: restore, verify, drill."""

from __future__ import annotations

import pytest

from pipeline.config import load_config
from pipeline.engine.plans import synthetic_disk
from tests.integration.test_cli_vsphere import vmpump

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def backed_up(tmp_path_factory):  # noqa: ANN201
    tmp = tmp_path_factory.mktemp("cli-restore")
    job = tmp / "job.yaml"
    job.write_text(f"""
name: cli-restore
source: synthetic
repository: {{url: "file://{tmp}/repo"}}
placement: {{cpus_per_task: 0.5, memory_per_task: 128MiB}}
synthetic:
  - {{vm: vm-a, disk: disk0, size: 12MiB, seed: 5}}
  - {{vm: vm-a, disk: disk1, size: 4MiB, seed: 6}}
""")
    assert vmpump("init", "-c", str(job)).returncode == 0
    run = vmpump("backup", "-c", str(job))
    assert run.returncode == 0, run.stdout + run.stderr
    return job, tmp


def _source(job, disk: str) -> bytes:  # noqa: ANN001
    d = next(d for d in load_config(job).synthetic if d.disk == disk)
    src = synthetic_disk(d, 0).open()
    return src.read(0, src.capacity)


def test_restore_of_a_whole_vm_is_byte_identical(backed_up):
    job, tmp = backed_up
    result = vmpump("restore", "-c", str(job), "--vm", "vm-a", "--out-dir", str(tmp / "out"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("restored vm-a") == 2
    for disk in ("disk0", "disk1"):
        assert (tmp / "out" / f"{disk}.img").read_bytes() == _source(job, disk)


def test_verify_quick_and_full_pass_on_a_sound_repository(backed_up):
    job, _ = backed_up
    for args in ((), ("--full",)):
        result = vmpump("verify", "-c", str(job), *args)
        assert result.returncode == 0, result.stdout + result.stderr


def test_a_drill_records_restore_times(backed_up):
    job, tmp = backed_up
    result = vmpump("drill", "-c", str(job), "--scratch", str(tmp / "scratch"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "vm-a" in result.stdout
    assert list((tmp / "repo" / "reports").glob("drill-*.parquet"))


def test_restore_without_a_target_is_one_line(backed_up):
    job, _ = backed_up
    result = vmpump("restore", "-c", str(job))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: restore needs exactly one of --out FILE, --out-dir DIR or --put-url URL — see --help"
    ]
