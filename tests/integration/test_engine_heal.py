"""A chunk verify found damaged is healed by the next backup that can still read its block."""

from __future__ import annotations

import pytest

from pipeline.ops.damaged import damaged_chunk_ids
from pipeline.ops.restore import restore_vm
from pipeline.ops.verify import verify_repository
from pipeline.store.chunks import pack_key
from tests.integration.ops_world import back_up, job_for, new_location, source_bytes

pytestmark = pytest.mark.integration

STILL = """
  - {vm: vm-a, disk: disk0, size: 12MiB, seed: 31, change_rate: 0.0, zero_share: 0.0, duplicate_share: 0.0}
"""


def test_the_next_backup_re_uploads_a_damaged_chunk_and_verify_passes_again(ray_local, tmp_path):
    location = new_location("local", tmp_path)
    cfg = job_for(location, STILL)
    back_up(cfg, location)
    repo = location.open()
    entry = repo.chunk_index(refresh=True).table.slice(0, 1).to_pylist()[0]
    pack = tmp_path / "repo" / pack_key(entry["pack_id"])
    data = bytearray(pack.read_bytes())
    data[entry["offset"] + 7] ^= 0xFF
    pack.write_bytes(bytes(data))

    damaged = verify_repository(location, full=True)
    assert not damaged.ok
    assert damaged_chunk_ids(repo) == {entry["chunk_id"]}

    healing = back_up(cfg, location)  # nothing changed in the guest: CBT alone would read nothing
    (disk,) = healing.outcomes[0].disks
    assert disk.healed_blocks == 1 and disk.new_chunks == 1
    assert damaged_chunk_ids(repo) == set()
    assert verify_repository(location, full=True).ok

    first = repo.restore_points()[0]
    restore_vm(location, first, tmp_path / "out")
    assert (tmp_path / "out" / "disk0.img").read_bytes() == source_bytes(cfg, "vm-a", "disk0", 0)
