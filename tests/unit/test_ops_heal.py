"""A damaged chunk stored again in a new pack (what a healing backup does) reads and verifies clean."""

from __future__ import annotations

import random

import pytest

from pipeline.ops.damaged import damaged_chunk_ids
from pipeline.ops.errors import RestoreError
from pipeline.ops.restore import restore_disk
from pipeline.ops.targets import FileTarget
from pipeline.ops.verify import verify_repository
from pipeline.store.chunks import encode_chunk, pack_key
from tests.unit.ops_repo import BLOCK, disk_bytes, make_repo

BLOCKS = {i * BLOCK: random.Random(i).randbytes(BLOCK) for i in (0, 1, 3)}
CAPACITY = 4 * BLOCK


def damage(tmp_path, repo, chunk_id: bytes) -> str:
    entry = repo.lookup(chunk_id)
    path = tmp_path / "repo" / pack_key(entry.pack_id)
    data = bytearray(path.read_bytes())
    data[entry.offset + 10] ^= 0x01
    path.write_bytes(bytes(data))
    return entry.pack_id


def store_again(repo, plaintext: bytes) -> None:
    writer = repo.pack_writer()
    writer.add(repo.chunk_id(plaintext), encode_chunk(plaintext, 1))
    repo.write_index_segment(writer.upload(writer.seal()))


def test_a_healed_chunk_restores_and_verifies_clean(tmp_path):
    location, point = make_repo(tmp_path, BLOCKS, CAPACITY)
    repo = location.open()
    victim = repo.chunk_id(BLOCKS[BLOCK])
    damage(tmp_path, repo, victim)
    report = verify_repository(location, full=True)
    assert [p.chunk_ids for p in report.problems] == [(victim,)] and report.damaged_points() == {point.id}
    assert damaged_chunk_ids(repo) == {victim}
    with pytest.raises(RestoreError):
        restore_disk(location, point, point.disks[0], FileTarget(tmp_path / "a.img"))

    store_again(repo, BLOCKS[BLOCK])
    assert verify_repository(location, full=True, mark=False).ok
    assert verify_repository(location, mark=False).ok
    target = FileTarget(tmp_path / "b.img")
    restore_disk(location, point, point.disks[0], target)
    assert target.path.read_bytes() == disk_bytes(BLOCKS, CAPACITY)


def test_a_lost_pack_is_healed_by_a_copy_in_another_pack(tmp_path):
    location, point = make_repo(tmp_path, BLOCKS, CAPACITY)
    repo = location.open()
    lost = repo.lookup(repo.chunk_id(BLOCKS[0])).pack_id
    (tmp_path / "repo" / pack_key(lost)).unlink()
    assert not verify_repository(location, mark=False).ok
    for data in BLOCKS.values():
        store_again(repo, data)
    assert verify_repository(location, mark=False).ok
    target = FileTarget(tmp_path / "c.img")
    restore_disk(location, point, point.disks[0], target)
    assert target.path.read_bytes() == disk_bytes(BLOCKS, CAPACITY)
