"""An S3 endpoint that dies mid-backup: the VM fails in one line, no restore point appears, and
a rerun against the endpoint once it is back reuses what was uploaded."""

from __future__ import annotations

import threading
import time

import boto3
import pytest
from moto.server import ThreadedMotoServer

from pipeline.config import parse_config
from pipeline.engine.backup import run_backup
from pipeline.errors import VmpumpError
from pipeline.store.backend import open_store
from pipeline.store.repository import Repository
from tests.integration.repo_checks import restored_bytes
from tests.integration.test_engine_failures import DISK, SlowDisk, plan_for

pytestmark = pytest.mark.integration


def _server() -> tuple[ThreadedMotoServer, str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


def _cfg(endpoint: str):  # noqa: ANN202
    return parse_config(f"""
name: dies
source: synthetic
repository: {{url: "s3://dying-endpoint/repo", endpoint_url: "{endpoint}", addressing_style: path}}
placement: {{cpus_per_task: 0.5, memory_per_task: 64MiB}}
synthetic: [{{vm: victim, size: 48MiB}}]
""")


def test_an_endpoint_that_dies_mid_run_fails_the_vm_and_a_rerun_reuses_its_packs(
    s3_endpoint, ray_local, tmp_path
):
    server, endpoint = _server()
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="dying-endpoint")
    Repository.init(open_store("s3://dying-endpoint/repo", endpoint_url=endpoint, addressing_style="path"),
                    pack_size=2 << 20)  # fmt: skip

    outcome: dict = {}

    def backup() -> None:
        try:
            outcome["summary"] = run_backup(
                _cfg(endpoint), [plan_for(SlowDisk(DISK, str(tmp_path / "pid"), 0.05))]
            )
        except VmpumpError as exc:  # the run's own report cannot be written to a dead endpoint either
            outcome["error"] = exc

    runner = threading.Thread(target=backup)
    runner.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listed = client.list_objects_v2(Bucket="dying-endpoint", Prefix="repo/packs/").get("KeyCount", 0)
        if listed >= 2:
            break
        time.sleep(0.05)
    server.stop()  # moto keeps its state in this process: a new server shows the same bucket
    runner.join(180)
    assert not runner.is_alive()
    if "summary" in outcome:
        (failed,) = outcome["summary"].failed
        message = failed.error
    else:
        message = str(outcome["error"])
    assert "\n" not in message and ("reach" in message or "S3" in message), message

    server, endpoint = _server()
    try:
        repo = Repository.open(
            open_store("s3://dying-endpoint/repo", endpoint_url=endpoint, addressing_style="path")
        )
        assert repo.restore_points() == []
        rerun = run_backup(_cfg(endpoint), [plan_for(SlowDisk(DISK, str(tmp_path / "pid"), 0.0))])
        assert not rerun.failed, rerun.failed[0].error
        assert rerun.recovered_chunks > 0
        (point,) = repo.restore_points()
        assert restored_bytes(repo, point.disks[0].manifest_key) == DISK.open().read(0, DISK.size)
    finally:
        server.stop()
