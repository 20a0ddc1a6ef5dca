"""The command line as a user runs it, against the simulator: init, backup, points, snapshots."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def vmpump(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from pipeline.cli import main; main()", *args],
        capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.fixture(scope="module")
def job_file(vcsim, tmp_path_factory):  # noqa: ANN201
    tmp = tmp_path_factory.mktemp("cli")
    vcsim.write_disk(vcsim.vm_names()[0], 0, 4096, b"hello from the guest" * 100)
    path = tmp / "job.yaml"
    path.write_text(f"""
name: cli
vcenter: {{host: "{vcsim.host}", port: {vcsim.port}, user: {vcsim.user}, password_env: VC_PW, protocol: http}}
selection: {{vms: ["{vcsim.vm_names()[0]}"]}}
repository: {{url: "file://{tmp}/repo"}}
placement: {{cpus_per_task: 0.5, memory_per_task: 128MiB}}
""")
    return path, {"VC_PW": vcsim.password}


def test_init_backup_and_points_through_the_cli(job_file):
    path, env = job_file
    assert vmpump("init", "-c", str(path), env=env).returncode == 0
    dry = vmpump("backup", "-c", str(path), "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert "full" in dry.stdout
    run = vmpump("backup", "-c", str(path), env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ok" in run.stdout
    points = vmpump("points", "-c", str(path), env=env)
    assert points.returncode == 0 and "DC0" in points.stdout
    snaps = vmpump("snapshots", "list", "-c", str(path), env=env)
    assert snaps.returncode == 0 and "no vmpump snapshots" in snaps.stdout
    hunt = vmpump("snapshots", "hunt", "-c", str(path), "--dry-run", env=env)
    assert hunt.returncode == 0 and "0 orphaned" in hunt.stdout


def test_a_missing_password_variable_is_one_line(job_file):
    path, _ = job_file
    env = {k: v for k, v in os.environ.items() if k != "VC_PW"}
    result = subprocess.run(
        [sys.executable, "-c", "from pipeline.cli import main; main()", "backup", "-c", str(path)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: environment variable VC_PW (vcenter.password_env) is not set — export VC_PW=... before running vmpump"
    ]


def test_an_unreachable_vcenter_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"""
name: cli
vcenter: {{host: "127.0.0.1", port: 9, user: u, password_env: VC_PW, protocol: http}}
repository: {{url: "file://{tmp_path}/repo"}}
""")
    result = vmpump("snapshots", "list", "-c", str(bad), env={"VC_PW": "x"})
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: cannot reach vCenter at 127.0.0.1:9"), lines[0]
