"""A driver that runs backup after backup keeps its index shards and admission actor between runs,
refreshed from the repository at each run start, and starts new ones when the kept ones are gone."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import ray

import pipeline.engine.backup as backup
from pipeline.engine.dedup import DedupShard
from pipeline.ops.restore import restore_vm
from pipeline.store.chunks import IndexEntry, encode_chunk
from tests.integration.ops_world import back_up, job_for, new_location, source_bytes

pytestmark = pytest.mark.integration

ONE_VM = """
  - {vm: vm-a, disk: disk0, size: 8MiB, seed: 41, change_rate: 0.25, zero_share: 0.0, duplicate_share: 0.0}
"""


def _kept_actor_ids() -> set[str]:
    kept = backup._kept
    assert kept is not None and not kept.in_use
    actors = [*kept.index.shards, kept.admission]
    return {a._actor_id.hex() for a in actors if a is not None}


def test_the_next_run_reuses_the_shards_and_learns_what_other_writers_added(ray_local, tmp_path):
    location = new_location("local", tmp_path)
    cfg = job_for(location, ONE_VM)
    first = back_up(cfg, location)
    kept = _kept_actor_ids()
    assert first.grants, "the admission log of the first run"

    # another writer stores a block this VM is about to write: the kept shards have never seen it
    block = location.open().config.block_size
    before, after = source_bytes(cfg, "vm-a", "disk0", 0), source_bytes(cfg, "vm-a", "disk0", 1)
    changed = [o for o in range(0, len(after), block) if before[o : o + block] != after[o : o + block]]
    assert changed
    other = location.open()
    planted = other.chunk_id(after[changed[0] : changed[0] + block])
    writer = other.pack_writer()
    writer.add(planted, encode_chunk(after[changed[0] : changed[0] + block], 3))
    other.write_index_segment(writer.upload(writer.seal()))

    second = back_up(cfg, location)  # incremental: only changed blocks are read
    assert _kept_actor_ids() == kept, "the same actors served both runs"
    assert second.grants and all(g.at >= first.grants[-1].at for g in second.grants), "a fresh log"
    (disk,) = second.outcomes[0].disks
    assert disk.blocks_read == len(changed) and disk.dedup_blocks >= 1
    copies = (
        location.open()
        .chunk_index(refresh=True)
        .table.filter(pc.equal(pc.field("chunk_id"), pa.scalar(planted, pa.binary(32))))
    )
    assert copies.num_rows == 1, "the planted chunk was not uploaded again"

    points = location.open().restore_points()
    restore_vm(location, points[-1], tmp_path / "out")
    assert (tmp_path / "out" / "disk0.img").read_bytes() == source_bytes(cfg, "vm-a", "disk0", 1)


def test_a_run_starts_new_services_when_the_kept_ones_died(ray_local, tmp_path):
    location = new_location("local", tmp_path)
    cfg = job_for(location, ONE_VM)
    back_up(cfg, location)
    kept = backup._kept
    assert kept is not None
    ray.kill(kept.index.shards[0])

    again = back_up(cfg, location)
    assert backup._kept is not None and backup._kept is not kept
    assert again.outcomes[0].point_id is not None
    # the new shards loaded the index: blocks the first run stored are not uploaded twice
    (disk,) = again.outcomes[0].disks
    assert disk.new_chunks <= disk.blocks_read


def test_a_different_repository_replaces_the_kept_services(ray_local, tmp_path):
    one = new_location("local", tmp_path / "one")
    two = new_location("local", tmp_path / "two")
    back_up(job_for(one, ONE_VM), one)
    kept = backup._kept
    assert kept is not None
    back_up(job_for(two, ONE_VM), two)
    assert backup._kept is not kept and backup._kept.key.location.url == two.url
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(kept.index.shards[0].size.remote(), timeout=30)


def test_a_shard_counts_a_chunk_as_unindexed_until_its_segment_is_written(tmp_path):
    location = new_location("local", tmp_path)
    shard = DedupShard(location, 0, 1, 30.0)  # the actor's class, in this process
    entry = IndexEntry(b"\x01" * 32, "0" * 64, 0, 10, 10, "raw")
    assert shard.unindexed([entry.chunk_id]) == 1
    shard.add_entries([entry], "owner")
    assert shard.unindexed([entry.chunk_id]) == 1, "known for dedup, but in no index segment yet"
    assert shard.flush() is not None
    assert shard.unindexed([entry.chunk_id]) == 0
