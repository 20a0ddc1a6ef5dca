"""Restore on Ray from real restore points: byte-identical, sparse, complete or absent."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from pipeline.errors import UsageError
from pipeline.ops.errors import RestoreError
from pipeline.ops.restore import RestoreTuning, restore_disk, restore_vm
from pipeline.ops.select import select_disk, select_point
from pipeline.ops.targets import FileTarget
from pipeline.store.errors import RestorePointNotFoundError
from tests.integration.ops_world import (
    back_up,
    job_for,
    make_ray_see_s3_credentials,
    new_location,
    source_bytes,
)

pytestmark = pytest.mark.integration
MiB = 1 << 20


@pytest.fixture(params=["local", "s3"])
def location(request, tmp_path):
    if request.param == "local":
        return new_location("local", tmp_path)
    endpoint, url = request.getfixturevalue("s3_endpoint"), request.getfixturevalue("s3_bucket_url")
    make_ray_see_s3_credentials()
    return new_location("s3", tmp_path, endpoint, url)


def test_full_and_incremental_points_restore_byte_identical(location, ray_local, tmp_path):
    cfg = job_for(location)
    first = back_up(cfg, location)
    second = back_up(cfg, location)
    repo = location.open()
    for generation, run in ((0, first), (1, second)):
        for outcome in run.outcomes:
            point = repo.restore_point(outcome.point_id)
            results = restore_vm(location, point, tmp_path / f"{outcome.name}-{generation}")
            for disk, result in zip(point.disks, results, strict=True):
                restored = Path(tmp_path / f"{outcome.name}-{generation}" / f"{disk.disk_key}.img")
                expected = source_bytes(cfg, point.vm.name, disk.disk_key, generation)
                assert restored.read_bytes() == expected, (generation, outcome.name, disk.disk_key)
                assert result.capacity == len(expected) and result.mb_per_s > 0
    # the incremental really changed the disk, so the check above compared two different images
    assert source_bytes(cfg, "vm-a", "disk0", 0) != source_bytes(cfg, "vm-a", "disk0", 1)


def test_a_point_taken_before_a_later_incremental_is_unaffected(ray_local, tmp_path):
    location = new_location("local", tmp_path)
    cfg = job_for(location)
    first = back_up(cfg, location)
    back_up(cfg, location)
    back_up(cfg, location)
    repo = location.open()
    point = repo.restore_point(next(o.point_id for o in first.outcomes if o.name == "vm-a"))
    target = FileTarget(tmp_path / "old.img")
    restore_disk(
        location, point, select_disk(point, "disk0"), target, RestoreTuning(tasks=3, window_bytes=2 * MiB)
    )
    assert target.path.read_bytes() == source_bytes(cfg, "vm-a", "disk0", 0)


def test_restored_image_is_sparse_where_the_manifest_has_holes(ray_local, tmp_path):
    location = new_location("local", tmp_path)
    cfg = job_for(location, disks="\n  - {vm: holey, disk: d, size: 32MiB, seed: 5, zero_share: 0.6}\n")
    back_up(cfg, location)
    point = select_point(location.open(), "latest", vm="holey")
    target = FileTarget(tmp_path / "holey.img")
    restore_disk(location, point, select_disk(point, None), target)
    st = os.stat(target.path)
    manifest = location.open().read_manifest(point.disks[0].manifest_key)
    assert st.st_size == 32 * MiB
    assert manifest.stored_bytes() < 0.6 * st.st_size  # the disk really has holes
    assert st.st_blocks * 512 <= manifest.stored_bytes() + 1 * MiB  # and they are not allocated
    assert target.path.read_bytes() == source_bytes(cfg, "holey", "d", 0)


def test_as_of_picks_the_newest_point_of_the_vm_at_or_before_the_time(ray_local, tmp_path):
    location = new_location("local", tmp_path)
    cfg = job_for(location)
    back_up(cfg, location)
    back_up(cfg, location)
    repo = location.open()
    first, second = [p for p in repo.restore_points() if p.vm.name == "vm-b"]
    assert select_point(repo, None, vm="vm-b", as_of=first.created).id == first.id
    assert (
        select_point(repo, None, vm="vm-b", as_of=second.created - timedelta(microseconds=1)).id == first.id
    )
    assert select_point(repo, None, vm="vm-b", as_of=second.created + timedelta(days=1)).id == second.id
    assert select_point(repo, "latest", vm="vm-b").id == second.id
    assert select_point(repo, second.id[:8]).id == second.id
    with pytest.raises(RestorePointNotFoundError, match="at or before"):
        select_point(repo, None, vm="vm-b", as_of=first.created - timedelta(seconds=1))
    with pytest.raises(UsageError, match="2 disks"):
        select_disk(select_point(repo, vm="vm-a"), None)


def test_an_existing_image_is_not_overwritten_without_asking(ray_local, tmp_path):
    location = new_location("local", tmp_path)
    back_up(job_for(location), location)
    point = select_point(location.open(), vm="vm-b")
    (tmp_path / "taken.img").write_bytes(b"keep me")
    with pytest.raises(RestoreError, match="already exists"):
        restore_disk(location, point, point.disks[0], FileTarget(tmp_path / "taken.img"))
    assert (tmp_path / "taken.img").read_bytes() == b"keep me"
