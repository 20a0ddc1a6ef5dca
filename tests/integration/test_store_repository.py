import json
import os
import random
from datetime import datetime, timedelta, timezone

import pytest

from pipeline.store.backend import ObjectStore, open_store
from pipeline.store.chunks import encode_chunk, is_all_zero
from pipeline.store.errors import (
    BucketNotFoundError,
    ChunkCorruptError,
    RepositoryExistsError,
    RepositoryLockedError,
    RepositoryNotFoundError,
    RestorePointNotFoundError,
    UnsupportedFormatError,
)
from pipeline.store.manifest import DiskManifest
from pipeline.store.repository import Repository
from pipeline.store.restore_point import DiskRecord, RestorePoint, VmRef

pytestmark = pytest.mark.integration
BLOCK = 256 << 10


class CountingStore:
    """A pass-through store that counts pack uploads (a real store underneath, no fakes)."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner, self.url, self.pack_puts = inner, inner.url, 0

    def put(self, key, data, *, self_checking=False):
        self.pack_puts += key.startswith("packs/")
        self.inner.put(key, data, self_checking=self_checking)

    def get(self, key, offset=0, length=None):
        return self.inner.get(key, offset, length)

    def size(self, key):
        return self.inner.size(key)

    def list_keys(self, prefix=""):
        return self.inner.list_keys(prefix)

    def delete(self, key):
        self.inner.delete(key)


def disk_image(seed: int, blocks: int = 12) -> bytes:
    rng = random.Random(seed)
    parts = []
    for i in range(blocks):
        kind = i % 4
        if kind == 0:
            parts.append(bytes(BLOCK))
        elif kind == 1:
            parts.append(rng.randbytes(BLOCK))
        else:
            parts.append((b"log line %d " % rng.randrange(1000)) * (BLOCK // 13) + bytes(BLOCK % 13))
    return b"".join(parts)[: blocks * BLOCK - 1000]  # a short last block


def write_disk(
    repo: Repository, disk_key: str, image: bytes, *, crash_after_upload: bool = False
) -> DiskRecord:
    """What the engine does for one disk, single-threaded: the reference for these tests."""
    known = set(repo.known_chunk_ids().to_pylist())
    writer, entries, blocks = repo.pack_writer(), [], {}
    for offset in range(0, len(image), BLOCK):
        block = memoryview(image)[offset : offset + BLOCK]
        if is_all_zero(block):
            continue
        chunk_id = blocks[offset] = repo.chunk_id(block)
        if chunk_id in known:
            continue
        known.add(chunk_id)
        sealed = writer.add(chunk_id, encode_chunk(block, repo.config.compression_level))
        if sealed:
            entries += writer.upload(sealed)
    if sealed := writer.seal():
        entries += writer.upload(sealed)
    if crash_after_upload:
        raise SystemExit("simulated crash: packs are up, nothing else is")
    if entries:
        repo.write_index_segment(entries)
    manifest = DiskManifest.from_blocks(
        disk_key, capacity=len(image), block_size=BLOCK, change_id=None, blocks=blocks
    )
    return DiskRecord(
        disk_key, disk_key, len(image), repo.write_manifest(manifest), None, True, "first backup"
    )


def restore_disk(repo: Repository, record: DiskRecord) -> bytes:
    manifest = repo.read_manifest(record.manifest_key)
    out = bytearray(record.capacity)
    for offset, length, chunk_id in manifest.blocks():
        out[offset : offset + length] = repo.read_chunk(chunk_id)[:length]
    return bytes(out)


def point(*disks: DiskRecord, created: datetime | None = None) -> RestorePoint:
    return RestorePoint(
        id=RestorePoint.new_id(),
        vm=VmRef("web-01", "vm-42"),
        created=created or datetime.now(timezone.utc),
        disks=disks,
        consistency="crash",
        source_kind="image",
        job_name="nightly",
        stats={"bytes_read": 1.0},
    )


@pytest.fixture
def repo(object_store: ObjectStore) -> Repository:
    return Repository.init(object_store, block_size=BLOCK, pack_size=1 << 20)


def test_a_committed_disk_reads_back_byte_identical(repo: Repository):
    image = disk_image(1)
    committed = point(write_disk(repo, "scsi0:0", image))
    repo.commit_restore_point(committed)
    reopened = Repository.open(
        open_store(repo.store.url) if repo.store.url.startswith("file") else repo.store
    )
    found = reopened.restore_point("latest")
    assert found == committed
    assert restore_disk(reopened, found.disks[0]) == image


def test_identical_blocks_across_two_disks_are_stored_once(repo: Repository):
    first_image = disk_image(2)
    second_image = first_image[: 6 * BLOCK] + disk_image(3)[6 * BLOCK :]
    first = write_disk(repo, "scsi0:0", first_image)
    second = write_disk(repo, "scsi0:1", second_image)
    repo.commit_restore_point(point(first, second))
    distinct = {
        repo.chunk_id(image[o : o + BLOCK])
        for image in (first_image, second_image)
        for o in range(0, len(image), BLOCK)
        if not is_all_zero(image[o : o + BLOCK])
    }
    index = repo.chunk_index(refresh=True)
    assert len(index) == len(distinct) == len(repo.known_chunk_ids())
    assert restore_disk(repo, second) == second_image


def test_zero_blocks_are_holes_and_never_stored(repo: Repository):
    image = bytes(3 * BLOCK) + b"\x01" + bytes(BLOCK - 1)
    record = write_disk(repo, "scsi0:0", image)
    manifest = repo.read_manifest(record.manifest_key)
    assert [o for o, _, _ in manifest.blocks()] == [3 * BLOCK]
    assert manifest.chunk_at(0) is None
    assert restore_disk(repo, record) == image


def test_a_corrupted_pack_byte_is_detected_and_named(repo: Repository):
    image = disk_image(4)
    record = write_disk(repo, "scsi0:0", image)
    manifest = repo.read_manifest(record.manifest_key)
    _, _, chunk_id = next(iter(manifest.blocks()))
    entry = repo.lookup(chunk_id)
    key = f"packs/{entry.pack_id[:2]}/{entry.pack_id}"
    pack = bytearray(repo.store.get(key))
    pack[entry.offset + entry.length // 2] ^= 0x40
    repo.store.put(key, bytes(pack))
    with pytest.raises(
        ChunkCorruptError, match=f"in pack {entry.pack_id} at offset {entry.offset} is damaged"
    ):
        repo.read_chunk(chunk_id)


def test_a_crash_before_the_record_leaves_no_point_and_a_rerun_reuses_the_packs(object_store: ObjectStore):
    counting = CountingStore(object_store)
    Repository.init(counting, block_size=BLOCK, pack_size=1 << 20)
    image = disk_image(5, blocks=20)
    with pytest.raises(SystemExit):
        write_disk(Repository.open(counting), "scsi0:0", image, crash_after_upload=True)
    uploaded = counting.pack_puts
    assert uploaded >= 2
    assert Repository.open(counting).restore_points() == []
    with pytest.raises(RestorePointNotFoundError):
        Repository.open(counting).restore_point("latest")

    rerun = Repository.open(counting)
    recovered = rerun.recover_unindexed_packs()
    assert recovered and rerun.recover_unindexed_packs() == []
    record = write_disk(rerun, "scsi0:0", image)
    rerun.commit_restore_point(point(record))
    assert counting.pack_puts == uploaded  # no pack went up a second time
    assert restore_disk(Repository.open(counting), record) == image


def test_a_point_naming_unindexed_chunks_is_refused(repo: Repository):
    manifest = DiskManifest.from_blocks(
        "d", capacity=BLOCK, block_size=BLOCK, change_id=None, blocks={0: b"x" * 32}
    )
    record = DiskRecord("d", "d", BLOCK, repo.write_manifest(manifest), None, True)
    with pytest.raises(Exception, match="unindexed chunks"):
        repo.commit_restore_point(point(record))
    assert repo.restore_points() == []


def test_restore_points_are_found_by_id_prefix_and_latest(repo: Repository):
    base = datetime(2026, 1, 1, tzinfo=timezone.utc)
    points = [point(created=base + timedelta(days=d)) for d in (2, 0, 1)]
    for p in points:
        repo.commit_restore_point(p)
    listed = repo.restore_points()
    assert [p.created for p in listed] == sorted(p.created for p in points)
    assert repo.restore_point("latest") == points[0]
    assert repo.restore_point(points[1].id[:12]) == points[1]
    with pytest.raises(RestorePointNotFoundError, match="no restore point"):
        repo.restore_point("ffff-not-there")


def test_init_refuses_an_existing_repository(repo: Repository):
    with pytest.raises(RepositoryExistsError, match="already exists"):
        Repository.init(repo.store)


def test_open_without_a_repository_says_how_to_create_one(object_store: ObjectStore):
    with pytest.raises(RepositoryNotFoundError, match="vmpump init"):
        Repository.open(object_store)


def test_an_unknown_format_version_is_refused_clearly(repo: Repository):
    config = json.loads(repo.store.get("config"))
    repo.store.put("config", json.dumps({**config, "format_version": 99}).encode())
    with pytest.raises(UnsupportedFormatError, match="format version 99; this vmpump reads version 1"):
        Repository.open(repo.store)


def test_a_missing_bucket_is_a_clear_error_before_any_repository_work(s3_endpoint):
    with pytest.raises(BucketNotFoundError, match="does not exist"):
        Repository.open(open_store("s3://vmpump-missing/repo", endpoint_url=s3_endpoint))


def test_shared_locks_coexist_and_an_exclusive_one_waits_for_them(repo: Repository):
    with repo.lock("shared", owner="backup-a"), repo.lock("shared", owner="backup-b"):
        with pytest.raises(RepositoryLockedError, match="locked \\(shared\\) by backup-"):
            repo.lock("exclusive", owner="prune")
    with repo.lock("exclusive", owner="prune"):
        with pytest.raises(RepositoryLockedError, match="locked \\(exclusive\\) by prune"):
            repo.lock("shared", owner="backup-c")
    assert repo.store.list_keys("locks/") == []


def test_an_expired_lock_no_longer_blocks(repo: Repository):
    stale = repo.lock("exclusive", owner="crashed", lease=timedelta(seconds=-60))
    with repo.lock("shared", owner="backup"):
        pass
    stale.release()


def test_chunk_ids_are_blake3_of_the_plaintext(repo: Repository):
    import blake3

    data = os.urandom(1000)
    assert repo.chunk_id(data) == blake3.blake3(data).digest()


def test_batch_lookup_aligns_index_rows_with_the_ids_asked_for(repo: Repository):
    import pyarrow as pa

    record = write_disk(repo, "scsi0:0", disk_image(6))
    ids = [c for _, _, c in repo.read_manifest(record.manifest_key).blocks()]
    rows = repo.chunk_index(refresh=True).locate(pa.array([ids[1], b"\0" * 32, ids[0]], pa.binary(32)))
    assert rows.column("chunk_id").to_pylist() == [ids[1], None, ids[0]]
    assert rows.column("pack_id")[0].as_py() == repo.lookup(ids[1]).pack_id


def test_recovery_skips_a_damaged_orphan_pack_and_indexes_the_rest(object_store: ObjectStore):
    repo = Repository.init(object_store, block_size=BLOCK, pack_size=1 << 20)
    with pytest.raises(SystemExit):
        write_disk(repo, "scsi0:0", disk_image(7, blocks=20), crash_after_upload=True)
    packs = object_store.list_keys("packs/")
    object_store.put(packs[0], object_store.get(packs[0])[:-10])  # footer gone
    recovered = Repository.open(object_store).recover_unindexed_packs()
    assert {e.pack_id for e in recovered} == {k.rsplit("/", 1)[-1] for k in packs[1:]}


def test_refreshing_a_lock_pushes_its_expiry_out(repo: Repository):
    lock = repo.lock("shared", lease=timedelta(seconds=5))
    before = lock.record.expires
    lock.refresh()
    assert lock.record.expires > before
    stored = json.loads(repo.store.get(lock.record.key))
    assert stored["expires"] == lock.record.expires
    lock.release()


def test_a_point_is_refused_when_the_given_index_check_counts_unindexed_chunks(repo: Repository):
    image = disk_image(4)
    record = write_disk(repo, "scsi0:0", image)
    seen: list[int] = []

    def none_indexed(ids):  # noqa: ANN001, ANN202 - what a backup's index shards would answer
        seen.append(len(ids))
        return len(ids)

    with pytest.raises(Exception, match="unindexed chunks"):
        repo.commit_restore_point(point(record), unindexed=none_indexed)
    assert seen and repo.restore_points() == []
    committed = point(record)
    repo.commit_restore_point(committed, unindexed=lambda ids: 0)
    assert [p.id for p in repo.restore_points()] == [committed.id]
