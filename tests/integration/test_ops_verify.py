"""Verify quick and full against real damage: a flipped byte in a pack, a deleted pack."""

from __future__ import annotations

import pyarrow.compute as pc
import pytest

from pipeline.ops.damaged import clear_damaged, damage_markers, damaged_chunk_ids
from pipeline.ops.errors import RestoreError, VerifyFailedError
from pipeline.ops.restore import restore_disk
from pipeline.ops.select import select_disk
from pipeline.ops.targets import FileTarget
from pipeline.ops.verify import verify_repository
from pipeline.store.chunks import pack_key
from tests.integration.ops_world import back_up, job_for, new_location

pytestmark = pytest.mark.integration


@pytest.fixture
def world(ray_local, tmp_path):
    """Two runs of three disks; returns the location and the two vm-a points (old, new)."""
    location = new_location("local", tmp_path)
    cfg = job_for(location)
    back_up(cfg, location)
    back_up(cfg, location)
    repo = location.open()
    old, new = [p for p in repo.restore_points() if p.vm.name == "vm-a"]
    return location, old, new


def shared_chunk(repo, old, new) -> bytes:
    """A chunk of vm-a/disk0 that both points reference (an unchanged block)."""
    a = repo.read_manifest(select_disk(old, "disk0").manifest_key).referenced_chunk_ids()
    b = repo.read_manifest(select_disk(new, "disk0").manifest_key).referenced_chunk_ids()
    return a.filter(pc.is_in(a, value_set=b))[0].as_py()


def points_using(repo, chunk_id: bytes) -> set[str]:
    return {
        p.id
        for p in repo.restore_points()
        for d in p.disks
        if chunk_id in set(repo.read_manifest(d.manifest_key).referenced_chunk_ids().to_pylist())
    }


def test_a_clean_repository_verifies_quick_and_full(world):
    location, _, _ = world
    quick = verify_repository(location)
    full = verify_repository(location, full=True)
    assert quick.ok and full.ok, quick.lines() + full.lines()
    assert (quick.points, quick.disks) == (full.points, full.disks) == (4, 6)
    assert full.chunks == quick.chunks > 0
    assert full.bytes_read > 0 and quick.bytes_read == 0
    full.raise_if_damaged()


def test_a_flipped_byte_fails_verify_full_naming_chunk_and_points_and_stops_restore(world, tmp_path):
    location, old, new = world
    repo = location.open()
    victim = shared_chunk(repo, old, new)
    entry = repo.lookup(victim)
    path = tmp_path / "repo" / pack_key(entry.pack_id)
    data = bytearray(path.read_bytes())
    data[entry.offset + entry.length // 2] ^= 0x40
    path.write_bytes(bytes(data))

    assert verify_repository(location).ok  # quick reads no payloads: it cannot see this
    report = verify_repository(location, full=True)
    assert not report.ok
    (problem,) = report.problems
    assert (
        problem.kind == "damaged-chunk"
        and problem.chunk_ids == (victim,)
        and problem.pack_id == entry.pack_id
    )
    assert set(problem.points) == points_using(repo, victim) >= {old.id, new.id}
    assert victim.hex() in "\n".join(report.lines())
    with pytest.raises(VerifyFailedError) as failed:
        report.raise_if_damaged()
    assert failed.value.exit_code != 0 and old.id in str(failed.value)
    assert damaged_chunk_ids(repo) == {victim}
    assert set(damage_markers(repo)[0].points) == set(problem.points)

    target = FileTarget(tmp_path / "out" / "disk0.img")
    with pytest.raises(RestoreError) as stopped:
        restore_disk(location, old, select_disk(old, "disk0"), target)
    message = str(stopped.value)
    assert victim.hex() in message and entry.pack_id in message and old.id in message
    assert not target.path.exists() and not target.partial.exists()

    clear_damaged(repo, [victim])
    assert damaged_chunk_ids(repo) == set()


def test_a_deleted_pack_fails_verify_quick(world, tmp_path):
    location, old, new = world
    repo = location.open()
    victim = shared_chunk(repo, old, new)
    pack = repo.lookup(victim).pack_id
    (tmp_path / "repo" / pack_key(pack)).unlink()

    report = verify_repository(location)
    assert not report.ok
    (problem,) = report.problems
    assert problem.kind == "missing-pack" and problem.pack_id == pack and victim in problem.chunk_ids
    assert {old.id, new.id} <= set(problem.points)
    assert victim in damaged_chunk_ids(repo)
    full = verify_repository(location, full=True, mark=False)
    assert [p.kind for p in full.problems] == ["missing-pack"]
