"""A hand-made repository for ops unit tests: one VM, one disk, blocks chosen by the test (no Ray)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from pipeline.engine.dedup import RepoLocation
from pipeline.store.backend import open_store
from pipeline.store.chunks import encode_chunk
from pipeline.store.manifest import DiskManifest
from pipeline.store.repository import Repository
from pipeline.store.restore_point import DiskRecord, RestorePoint, VmRef

BLOCK = 256 << 10


def make_repo(
    tmp_path: Path, blocks: dict[int, bytes], capacity: int, *, created: datetime | None = None
) -> tuple[RepoLocation, RestorePoint]:
    """A repository whose one restore point's disk holds ``blocks`` (offset -> bytes), zeros elsewhere."""
    location = RepoLocation((tmp_path / "repo").as_uri())
    store = open_store(location.url)
    repo = (
        Repository.open(store)
        if store.size("config")
        else Repository.init(store, block_size=BLOCK, pack_size=1 << 20)
    )
    writer = repo.pack_writer()
    entries = []
    ids = {}
    for offset, data in sorted(blocks.items()):
        ids[offset] = repo.chunk_id(data)
        sealed = writer.add(ids[offset], encode_chunk(data, 3))
        if sealed is not None:
            entries += writer.upload(sealed)
    last = writer.seal()
    if last is not None:
        entries += writer.upload(last)
    repo.write_index_segment(entries)
    manifest = DiskManifest.from_blocks(
        "disk0", capacity=capacity, block_size=BLOCK, change_id=None, blocks=ids
    )
    key = repo.write_manifest(manifest)
    point = RestorePoint(
        id=RestorePoint.new_id(),
        vm=VmRef("vm-x", "test:vm-x"),
        created=created or datetime.now(timezone.utc),
        disks=(DiskRecord("disk0", "Hard disk 1", capacity, key, None, True),),
        consistency="crash",
        source_kind="test",
        job_name="unit",
    )
    repo.commit_restore_point(point)
    return location, point


def disk_bytes(blocks: dict[int, bytes], capacity: int) -> bytes:
    out = bytearray(capacity)
    for offset, data in blocks.items():
        out[offset : offset + len(data)] = data
    return bytes(out)
