"""The run-reports notebook runs against a real repository (its code cells, in order)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.ops_world import back_up, job_for, new_location

pytestmark = pytest.mark.integration


def test_the_run_reports_notebook_reads_a_real_repository(ray_local, tmp_path, capsys):
    location = new_location("local", tmp_path)
    cfg = job_for(location)
    back_up(cfg, location)
    back_up(cfg, location)
    notebook = json.loads(Path("notebooks/run_reports.ipynb").read_text())
    scope: dict = {}
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            source = "".join(cell["source"]).replace('"file:///tmp/vmpump-demo-repo"', repr(location.url))
            exec(compile(source, "run_reports.ipynb", "exec"), scope)  # noqa: S102 - our own notebook
    out = capsys.readouterr().out
    assert "disk rows" in out and "MiB/s" in out and "compress" in out
    assert scope["measured_change_rates"](scope["repo"])  # the incremental measured something
