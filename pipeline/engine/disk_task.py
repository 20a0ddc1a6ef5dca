"""One disk, read → hash → dedup → compress → pack → upload, inside one worker process.

A disk's bytes never leave this process except inside finished packs: the Ray task receives a
recipe for its source and returns a small ``DiskResult``. Inside, a few worker threads each carry
one read run at a time through every stage (blake3 and zstd release the GIL, so they use several
cores), and an upload pool overlaps pack uploads. Memory is bounded whatever the disk size: about
``threads × READ_RUN + (UPLOADS_IN_FLIGHT + threads + 1) × pack_size`` per task, plus 41 bytes a
block for the block log.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

from pipeline.engine.admission import ReadThrottle
from pipeline.engine.block_log import BlockLog
from pipeline.engine.cbt_guard import check_unchanged, sample_unchanged
from pipeline.engine.dedup import KNOWN, MINE, THEIRS, ClaimTicket, DedupIndex, RepoLocation
from pipeline.engine.placement import PlacementLimits, disk_task_options
from pipeline.engine.stats import PeakRss, StageClock
from pipeline.extents import Extent, block_offsets, block_runs
from pipeline.ops.damaged import damaged_chunk_ids
from pipeline.source.base import ChangedAreasError, ChangeIdInvalidError, DiskSource, SourceError
from pipeline.store.chunks import PackWriter, encode_chunk, is_all_zero
from pipeline.store.manifest import DiskManifest, merge_manifest

log = logging.getLogger(__name__)

READ_RUN = 8 << 20  # one read: large enough for a datastore to stream, small enough to bound memory
UPLOADS_IN_FLIGHT = 4
CLAIMS_IN_FLIGHT = 2  # per worker: a loaded proxy answers an actor call in tens of milliseconds


class SourceSpec(Protocol):
    """A picklable recipe that opens the disk source inside the worker."""

    def open(self) -> DiskSource: ...


@dataclass(frozen=True)
class DiskJob:
    vm_name: str
    vm_id: str
    disk_key: str
    label: str
    source: SourceSpec
    since: str | None = None  # change marker of the previous restore point of this disk
    previous_manifest: str | None = None
    extents: tuple[Extent, ...] | None = None  # precomputed changed extents; None: ask the source
    full_read_reason: str | None = None  # why the driver decided to read in full, if it did
    guard_share: float = 0.001  # share of unchanged blocks the CBT guard re-reads (0: no guard)
    datastore: str = ""  # where the disk lives: the latency gate throttles its reads


COUNTERS = (
    "bytes_read", "blocks_read", "zero_blocks", "dedup_blocks", "new_chunks", "new_bytes", "stored_bytes",
    "packs", "guard_sampled", "guard_mismatches", "healed_blocks",
)  # fmt: skip  # the additive figures of a DiskResult


@dataclass
class DiskResult:
    vm_name: str
    disk_key: str
    label: str
    capacity: int
    manifest_key: str
    change_id: str | None
    full_read: bool
    full_read_reason: str | None
    bytes_read: int = 0
    blocks_read: int = 0
    zero_blocks: int = 0
    dedup_blocks: int = 0
    new_chunks: int = 0
    new_bytes: int = 0  # plaintext bytes of chunks this task uploaded
    stored_bytes: int = 0  # what they took in packs
    packs: int = 0
    wall_s: float = 0.0
    guard_sampled: int = 0  # unchanged blocks the CBT guard re-read
    guard_mismatches: int = 0  # of which differed: CBT lied and the disk was read in full
    healed_blocks: int = 0  # unchanged blocks read again because verify found their chunk damaged
    peak_rss_growth: int = 0  # resident memory the task added at its peak, bytes
    stats: StageClock = field(default_factory=StageClock)


def backup_disk(
    job: DiskJob,
    location: RepoLocation,
    index: DedupIndex,
    *,
    threads: int = 3,  # one more than the cores a task gets: a worker waiting on I/O leaves none idle
    progress: Callable[[str, int], None] | None = None,
    lease_s: float = 30.0,
    admission: Any = None,
) -> DiskResult:
    """Back up one disk; returns where its manifest is. Raises on any failure: nothing is committed here."""
    started = time.perf_counter()
    owner = f"{job.disk_key}:{uuid.uuid4().hex}"
    repo = location.open()
    source = job.source.open()
    stop_heartbeat = threading.Event()
    heartbeat = threading.Thread(
        target=_renew_claims, args=(index, owner, lease_s, stop_heartbeat), daemon=True
    )
    heartbeat.start()
    rss = PeakRss()
    try:
        throttle = ReadThrottle(admission, job.datastore) if admission is not None else None
        run = _DiskRun(job, repo, source, index, owner, threads, progress, throttle)
        run.execute()
        manifest_key = run.write_manifest()
        result = run.result(manifest_key)
    finally:
        stop_heartbeat.set()
        source.close()
        index.release(owner)
        rss.stop()
    result.wall_s = time.perf_counter() - started
    result.peak_rss_growth = rss.growth
    return result


def _ready() -> bool:
    return True


def warm_up_workers(limits: PlacementLimits, count: int) -> None:
    """Start ``count`` worker processes for disk tasks now, without waiting for them.

    A Ray worker boots and imports this module in about half a second; a task that finds one idle
    starts at once. Called at run start, so the boot overlaps the index and admission start-up
    (and, on vSphere, the first snapshot); Ray keeps idle workers for the run's tasks.
    """
    import ray

    warm = ray.remote(_ready).options(**disk_task_options(limits))
    for _ in range(count):
        warm.remote()


def _renew_claims(index: DedupIndex, owner: str, lease_s: float, stop: threading.Event) -> None:
    while not stop.wait(lease_s / 3):
        try:
            index.renew(owner)
        except Exception:  # the run is failing anyway; the main thread reports why
            return


class _DiskRun:
    def __init__(
        self,
        job: DiskJob,
        repo,  # noqa: ANN001 - pipeline.store.repository.Repository
        source: DiskSource,
        index: DedupIndex,
        owner: str,
        threads: int,
        progress: Callable[[str, int], None] | None,
        throttle: ReadThrottle | None = None,
    ) -> None:
        self.job, self.repo, self.source, self.index, self.owner = job, repo, source, index, owner
        self.block_size: int = repo.config.block_size
        self.level: int = repo.config.compression_level
        self.capacity = source.capacity
        self.progress = progress
        self.throttle = throttle
        self.threads = threads
        self.lock = threading.Lock()  # guards the block log, the counters, the pack writer, in_flight
        self.uploads = ThreadPoolExecutor(UPLOADS_IN_FLIGHT, thread_name_prefix="vmpump-upload")
        self.upload_slots = threading.Semaphore(UPLOADS_IN_FLIGHT)
        self.in_flight: list[Future[None]] = []
        self.writer: PackWriter = repo.pack_writer()
        self.clock = StageClock()
        self.changed = BlockLog()
        self.waiting: dict[bytes, list[int]] = {}  # chunk id → offsets whose upload another owner claimed
        self.full_read = job.previous_manifest is None
        self.full_read_reason = job.full_read_reason
        self.counts = dict.fromkeys(COUNTERS, 0)

    # -- planning -------------------------------------------------------------------------

    def _extents(self) -> list[Extent]:
        if self.job.extents is not None:
            return list(self.job.extents)
        if self.job.previous_manifest is not None:
            try:
                return self.source.changed_extents(self.job.since)
            except (ChangeIdInvalidError, ChangedAreasError) as exc:
                self.full_read = True
                self.full_read_reason = f"changed areas unusable ({exc.cause}); read in full"
                log.warning("disk %s of %s: %s", self.job.disk_key, self.job.vm_name, self.full_read_reason)
        try:
            return self.source.changed_extents(None)
        except ChangedAreasError as exc:  # never a silent gap: read every byte, zeros become holes
            self.full_read_reason = f"allocated areas unusable ({exc.cause}); read every block"
            log.warning("disk %s of %s: %s", self.job.disk_key, self.job.vm_name, self.full_read_reason)
            return [Extent(0, self.capacity)]

    # -- the pipeline ---------------------------------------------------------------------

    def execute(self) -> None:
        extents = self._extents()
        if self.full_read and self.job.previous_manifest is not None:
            # a full read that replaces everything: blocks not read are holes, not "unchanged"
            self.job = _without_previous(self.job)
        offsets = block_offsets(extents, self.block_size, self.capacity)
        if self.job.previous_manifest is not None and self.job.guard_share > 0:
            offsets = self._guard(offsets)
        if self.job.previous_manifest is not None:
            offsets = self._with_damaged_blocks(offsets)
        try:
            self._pipeline(offsets)
            self._seal_and_upload(self.writer.seal())
            self._wait_uploads()
            self._settle_waiting()
        finally:
            self.uploads.shutdown(wait=True, cancel_futures=True)

    @cached_property
    def previous(self) -> DiskManifest:
        assert self.job.previous_manifest is not None
        return self.repo.read_manifest(self.job.previous_manifest)

    def _with_damaged_blocks(self, offsets: list[int]) -> list[int]:
        """Also read the unchanged blocks whose chunk verify found damaged: uploading them again
        heals every restore point that references them."""
        damaged = damaged_chunk_ids(self.repo)
        if not damaged:
            return offsets
        heal = {off for off, _, cid in self.previous.blocks() if cid in damaged}
        self.counts["healed_blocks"] = len(heal - set(offsets))
        if self.counts["healed_blocks"]:
            log.warning("disk %s of %s: re-reading %d blocks of damaged chunks", self.job.disk_key,
                        self.job.vm_name, self.counts["healed_blocks"])  # fmt: skip
        return sorted(set(offsets) | heal)

    def _guard(self, offsets: list[int]) -> list[int]:
        """Check CBT on a sample of unchanged blocks; on a lie, the offsets of a full read."""
        previous = self.previous
        sample = sample_unchanged(
            offsets, self.capacity, self.block_size, self.job.guard_share, hash(self.owner)
        )
        with self.clock.stage("source_read", len(sample) * self.block_size):
            guard = check_unchanged(self.source, previous, sample, self.block_size, self.repo.chunk_id)
        self.counts["guard_sampled"] = guard.sampled
        self.counts["guard_mismatches"] = len(guard.mismatches)
        if not guard.lied:
            return offsets
        log.error("disk %s of %s: %s", self.job.disk_key, self.job.vm_name, guard.reason())
        self.full_read, self.full_read_reason = True, guard.reason()
        self.job = _without_previous(self.job)
        # CBT lied: its list of allocated areas is no better than its list of changes; read every block
        return block_offsets([Extent(0, self.capacity)], self.block_size, self.capacity)

    def _pipeline(self, offsets: list[int]) -> None:
        """``threads`` workers each take the next read run and carry it through every stage: read,
        hash, claim, compress, pack. Nothing is handed between threads, so no core idles waiting
        for another's piece of work. A worker sends a run's claim to the index actors and reads and
        hashes its next run before it needs the answer, so the round trip costs no CPU time."""
        runs = iter(block_runs(offsets, self.block_size, max(READ_RUN, self.block_size)))
        take = threading.Lock()
        failed: list[BaseException] = []

        def work() -> None:
            try:
                pending: deque = deque()
                while not failed:
                    with take:
                        run = next(runs, None)
                    if run is None:
                        break
                    pending.append(self._read_and_claim(run))
                    if len(pending) > CLAIMS_IN_FLIGHT:
                        self._compress_and_pack(*pending.popleft())
                while pending and not failed:
                    self._compress_and_pack(*pending.popleft())
            except BaseException as exc:  # the first failure stops every worker and is raised below
                failed.append(exc)

        workers = [
            threading.Thread(target=work, name=f"vmpump-disk-{i}", daemon=True) for i in range(self.threads)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        if failed:
            raise failed[0]

    def _read_and_claim(self, run: Extent) -> tuple[dict[bytes, tuple[int, memoryview]], ClaimTicket | None]:
        """Read a run, hash and log its blocks, and send the claim of its distinct non-zero ones."""
        if self.throttle is not None:  # the datastore is slow: the latency gate says wait
            with self.clock.stage("admission_wait"):
                self.throttle.pause()
        length = min(run.length, self.capacity - run.offset)
        with self.clock.stage("source_read", length):
            data = memoryview(self.source.read(run.offset, length))
        if len(data) != length:
            raise SourceError(
                f"disk {self.job.disk_key} of {self.job.vm_name}: {len(data)} bytes came back for a "
                f"{length}-byte read at {run.offset}",
                "the source changed size or the transport is broken",
            )
        blocks = [(run.offset + s, data[s : s + self.block_size]) for s in range(0, length, self.block_size)]
        ids = [self._hash(blk) for _, blk in blocks]
        unique: dict[bytes, tuple[int, memoryview]] = {}  # a block seen twice in a run is claimed once
        with self.lock:
            for (off, blk), cid in zip(blocks, ids, strict=True):
                self.changed.add(off, cid)
                self.counts["bytes_read"] += len(blk)
                self.counts["blocks_read"] += 1
                if cid is None:
                    self.counts["zero_blocks"] += 1
                else:
                    self.counts["dedup_blocks"] += 1  # until the claim says this task uploads it
                    unique.setdefault(cid, (off, blk))
        if self.progress is not None:
            self.progress(f"{self.job.vm_id}/{self.job.disk_key}", length)
        return unique, self.index.claim_async(list(unique), self.owner) if unique else None

    def _compress_and_pack(
        self, unique: dict[bytes, tuple[int, memoryview]], ticket: ClaimTicket | None
    ) -> None:
        if ticket is None:
            return
        with self.clock.stage("dedup"):
            codes = ticket.result()
        new = []
        for (cid, (off, blk)), code in zip(unique.items(), codes, strict=True):
            if code == MINE:
                new.append((cid, blk))
            elif code == THEIRS:
                with self.lock:
                    self.waiting.setdefault(cid, []).append(off)
        self._upload_new(new)

    def _hash(self, block: memoryview) -> bytes | None:
        """The chunk id, or None for an all-zero block (a hole)."""
        start = time.thread_time()  # CPU time: on a busy proxy, wall time would count waiting for a core
        # memcmp against zeros runs at tens of GB/s and stops at the first non-zero byte: holes
        # (often a third of a disk) are never hashed, and data blocks pay next to nothing for it
        cid = None if is_all_zero(block) else self.repo.chunk_id(block)
        self.clock.add("hash", time.thread_time() - start, len(block))
        return cid

    def _upload_new(self, new: list[tuple[bytes, memoryview]]) -> None:
        """Compress the blocks this task won the claim for and add them to the pack being filled."""
        for cid, blk in new:
            start = time.thread_time()
            encoded = encode_chunk(blk, self.level)
            self.clock.add("compress", time.thread_time() - start, len(blk))
            with self.lock:
                self.counts["dedup_blocks"] -= 1
                self.counts["new_chunks"] += 1
                self.counts["new_bytes"] += len(blk)
                self.counts["stored_bytes"] += len(encoded.payload)
                sealed = self.writer.add(cid, encoded)
            self._seal_and_upload(sealed)

    def _seal_and_upload(self, sealed) -> None:  # noqa: ANN001 - SealedPack | None
        if sealed is None:
            return
        self.upload_slots.acquire()  # bounds the packs in memory: backpressure on the workers
        with self.lock:
            self._reap_uploads()
            self.counts["packs"] += 1
            self.in_flight.append(self.uploads.submit(self._upload, sealed))

    def _upload(self, sealed) -> None:  # noqa: ANN001 - SealedPack
        try:
            start = time.perf_counter()
            entries = self.writer.upload(sealed)
            self.clock.add("target_write", time.perf_counter() - start, sum(e.length for e in entries))
            with self.clock.stage("dedup"):
                self.index.add_entries(entries, self.owner)
        finally:
            self.upload_slots.release()

    def _reap_uploads(self) -> None:
        done = [f for f in self.in_flight if f.done()]
        for f in done:
            self.in_flight.remove(f)
            f.result()  # an upload error surfaces here

    def _wait_uploads(self) -> None:
        for f in self.in_flight:
            f.result()
        self.in_flight.clear()

    def _settle_waiting(self) -> None:
        """Wait until chunks another owner claimed are durable; take over those whose owner died."""
        delay = 0.05
        while self.waiting:
            codes = self.index.claim(list(self.waiting), self.owner)
            mine = []
            for (cid, offs), code in zip(list(self.waiting.items()), codes, strict=True):
                if code == KNOWN:
                    del self.waiting[cid]
                elif code == MINE:
                    mine.append((cid, offs[0]))
                    del self.waiting[cid]
            for cid, off in mine:  # the claimer died: read the block again and upload it ourselves
                length = min(self.block_size, self.capacity - off)
                with self.clock.stage("source_read", length):
                    blk = memoryview(self.source.read(off, length))
                if self.repo.chunk_id(blk) != cid:
                    raise RuntimeError(f"block at offset {off} changed under a snapshot read")
                self._upload_new([(cid, blk)])
            if mine:
                self._seal_and_upload(self.writer.seal())
                self._wait_uploads()
            if self.waiting:
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    # -- results --------------------------------------------------------------------------

    def write_manifest(self) -> str:
        job = self.job
        if job.previous_manifest is not None and not self.full_read:
            previous = self.previous
            manifest = merge_manifest(
                previous, self.changed.as_mapping(), capacity=self.capacity, change_id=self.source.change_id
            )
        else:
            offsets, ids = self.changed.stored_blocks()
            manifest = DiskManifest.from_arrays(
                job.disk_key,
                capacity=self.capacity,
                block_size=self.block_size,
                change_id=self.source.change_id,
                offsets=offsets,
                chunk_ids=ids,
            )
        return self.repo.write_manifest(manifest)

    def result(self, manifest_key: str) -> DiskResult:
        return DiskResult(
            vm_name=self.job.vm_name,
            disk_key=self.job.disk_key,
            label=self.job.label,
            capacity=self.capacity,
            manifest_key=manifest_key,
            change_id=self.source.change_id,
            full_read=self.full_read,
            full_read_reason=self.full_read_reason,
            stats=self.clock,
            **self.counts,
        )


def _without_previous(job: DiskJob) -> DiskJob:
    from dataclasses import replace

    return replace(job, previous_manifest=None)
