"""The command line: version, and one-line errors for user mistakes."""

from __future__ import annotations

import subprocess
import sys


def _vmpump(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from pipeline.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_version_prints_the_package_version():
    from pipeline import __version__

    result = _vmpump("--version")
    assert result.returncode == 0
    assert __version__ in result.stdout


def test_a_command_without_a_repository_gets_one_line_and_a_hint():
    result = _vmpump("points")
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: no repository given — pass --repo")
    assert "Traceback" not in result.stderr


def test_a_malformed_config_gets_one_line_not_a_traceback(tmp_path):
    bad = tmp_path / "job.yaml"
    bad.write_text("name: x\nrepository:\n  url: ftp://nowhere\n")
    result = _vmpump("points", "-c", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "line 3" in lines[0] and "repository.url" in lines[0]
