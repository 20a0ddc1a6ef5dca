"""Restore, selection and coalescing on a hand-made local repository, in this process."""

from __future__ import annotations

import os
import random
from datetime import datetime, timedelta, timezone

import pytest

from pipeline.ops.reader import BlockRead, DiskImageReader, coalesce, fit
from pipeline.ops.restore import RestoreTuning, image_name, restore_disk, restore_vm
from pipeline.ops.select import select_point
from pipeline.ops.targets import FileTarget
from tests.unit.ops_repo import BLOCK, disk_bytes, make_repo

CAPACITY = 10 * BLOCK + 1000  # a short last block
DUP = random.Random(1).randbytes(BLOCK)
BLOCKS = {
    0: random.Random(2).randbytes(BLOCK),
    2 * BLOCK: DUP,
    3 * BLOCK: b"text " * (BLOCK // 5) + b"x" * (BLOCK % 5),
    5 * BLOCK: DUP,  # the same chunk twice on one disk
    10 * BLOCK: random.Random(3).randbytes(1000),
}


class Collector:
    """A stream target that keeps what it is sent."""

    description = "memory"

    def __init__(self) -> None:
        self.data = bytearray()

    def send(self, capacity: int, stream) -> None:
        for piece in stream:
            self.data += piece
        assert len(self.data) == capacity


def test_a_file_restore_is_byte_identical_and_sparse(tmp_path):
    location, point = make_repo(tmp_path, BLOCKS, CAPACITY)
    target = FileTarget(tmp_path / "out" / "disk0.img")
    result = restore_disk(location, point, point.disks[0], target, RestoreTuning(tasks=3, window_bytes=BLOCK))
    assert target.path.read_bytes() == disk_bytes(BLOCKS, CAPACITY)
    assert not target.partial.exists()
    assert os.stat(target.path).st_blocks * 512 <= 6 * BLOCK  # five data blocks; holes unallocated
    assert (result.capacity, result.chunks, result.stored_bytes) == (CAPACITY, 5, 4 * BLOCK + 1000)


def test_a_stream_restore_sends_every_byte_in_order_holes_as_zeros(tmp_path):
    location, point = make_repo(tmp_path, BLOCKS, CAPACITY)
    sink = Collector()
    restore_disk(location, point, point.disks[0], sink, RestoreTuning(threads=3, window_bytes=2 * BLOCK))
    assert bytes(sink.data) == disk_bytes(BLOCKS, CAPACITY)


def test_a_vm_restores_into_one_file_per_disk(tmp_path):
    location, point = make_repo(tmp_path, BLOCKS, CAPACITY)
    (result,) = restore_vm(location, point, tmp_path / "vm")
    assert (tmp_path / "vm" / "disk0.img").read_bytes() == disk_bytes(BLOCKS, CAPACITY)
    assert result.target.endswith("disk0.img")
    assert image_name("scsi0:1/odd name") == "scsi0_1_odd_name.img"


def test_random_reads_span_blocks_and_holes(tmp_path):
    location, point = make_repo(tmp_path, BLOCKS, CAPACITY)
    repo = location.open()
    reader = DiskImageReader(
        repo, repo.read_manifest(point.disks[0].manifest_key), point.id, cache_bytes=BLOCK
    )
    expected = disk_bytes(BLOCKS, CAPACITY)
    for offset, length in (
        (0, 10),
        (BLOCK - 5, 10),
        (BLOCK + 7, 3 * BLOCK),
        (CAPACITY - 1500, 1500),
        (0, CAPACITY),
    ):
        assert reader.read(offset, length) == expected[offset : offset + length]
    with pytest.raises(ValueError):
        reader.read(CAPACITY - 1, 2)


def test_as_of_ignores_later_points_of_the_vm(tmp_path):
    t0 = datetime(2026, 11, 20, 2, 0, tzinfo=timezone.utc)
    location, first = make_repo(tmp_path, BLOCKS, CAPACITY, created=t0)
    _, second = make_repo(tmp_path, {0: b"y" * BLOCK}, CAPACITY, created=t0 + timedelta(days=1))
    repo = location.open()
    assert select_point(repo, vm="vm-x", as_of=t0 + timedelta(hours=23)).id == first.id
    assert select_point(repo, vm="vm-x", as_of=datetime(2026, 11, 21, 2, 0)).id == second.id  # naive: UTC
    assert select_point(repo, "latest").id == second.id


def read(pack: str, offset: int, length: int, disk_offset: int = 0) -> BlockRead:
    return BlockRead(disk_offset, BLOCK, bytes(32), pack, offset, length, BLOCK, "zstd")


def test_adjacent_payloads_of_one_pack_are_fetched_in_one_range():
    ranges = coalesce([read("a", 0, 100), read("a", 100, 50), read("b", 0, 10), read("a", 150, 10)])
    assert [(r.pack_id, r.start, r.end, len(r.reads)) for r in ranges] == [("a", 0, 160, 3), ("b", 0, 10, 1)]


def test_far_apart_payloads_and_long_spans_are_split():
    gap = coalesce([read("a", 0, 100), read("a", 5000, 100)], max_gap=1000)
    assert [(r.start, r.end) for r in gap] == [(0, 100), (5000, 5100)]
    span = coalesce([read("a", i * 100, 100) for i in range(10)], max_span=300)
    assert [(r.start, r.end) for r in span] == [(0, 300), (300, 600), (600, 900), (900, 1000)]


def test_a_chunk_is_cut_or_zero_padded_to_its_block():
    assert fit(b"abcd", 2) == b"ab" and fit(b"ab", 4) == b"ab\0\0" and fit(b"ab", 2) == b"ab"
