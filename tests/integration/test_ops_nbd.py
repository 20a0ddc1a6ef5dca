"""Instant access: a restore point's disks served over NBD, read back by nbdinfo and qemu-img."""

from __future__ import annotations

import json
import subprocess

import pytest

from pipeline.ops.nbd import NbdServer, point_exports
from tests.integration.ops_world import back_up, job_for, new_location, source_bytes

pytestmark = pytest.mark.integration


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.fixture
def served(ray_local, tmp_path):
    """vm-a's first restore point, served while a later incremental exists (it must not leak in)."""
    location = new_location("local", tmp_path)
    cfg = job_for(location)
    back_up(cfg, location)
    back_up(cfg, location)
    repo = location.open()
    old = [p for p in repo.restore_points() if p.vm.name == "vm-a"][0]
    with NbdServer(point_exports(repo, old, cache_bytes=4 << 20)) as server:
        yield server, cfg, tmp_path / "repo"


def test_qemu_img_reads_every_disk_of_the_export_byte_identical(served, tmp_path):
    server, cfg, _ = served
    for disk, url in (
        ("disk0", server.url("disk0")),
        ("disk1", server.url("disk1")),
        ("disk0", server.url()),
    ):
        out = tmp_path / "out.raw"
        done = run("qemu-img", "convert", "-f", "raw", "-O", "raw", url, str(out))
        assert done.returncode == 0, done.stderr
        assert out.read_bytes() == source_bytes(cfg, "vm-a", disk, 0), url


def test_nbdinfo_lists_the_disks_and_sees_a_read_only_export_of_the_right_size(served, tmp_path):
    server, _, _ = served
    listed = run("nbdinfo", "--list", "--json", server.url())
    assert listed.returncode == 0, listed.stderr
    assert [e["export-name"] for e in json.loads(listed.stdout)["exports"]] == ["disk0", "disk1"]
    info = run("nbdinfo", "--json", server.url("disk1"))
    assert info.returncode == 0, info.stderr
    export = json.loads(info.stdout)["exports"][0]
    assert export["export-size"] == 5 << 20 and export["is_read_only"] is True
    assert run("nbdinfo", server.url("no-such-disk")).returncode != 0
    junk = tmp_path / "junk.raw"
    junk.write_bytes(b"x" * 65536)
    assert run(
        "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", str(junk), server.url("disk1")
    ).returncode


def test_a_damaged_chunk_reads_as_an_io_error_not_as_wrong_bytes(served, tmp_path):
    server, _, repo_dir = served
    for pack in (repo_dir / "packs").glob("*/*"):
        data = bytearray(pack.read_bytes())
        for i in range(0, len(data) - 4096, 4096):  # damage every payload of every pack
            data[i] ^= 0xFF
        pack.write_bytes(bytes(data))
    done = run("qemu-img", "convert", "-f", "raw", "-O", "raw", server.url("disk1"), str(tmp_path / "x.raw"))
    assert done.returncode != 0 and "Input/output error" in done.stderr
