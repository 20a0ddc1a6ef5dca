"""One disk, read → hash → dedup → compress → pack → upload, inside one worker process.

A disk's bytes never leave this process except inside finished packs: the Ray task receives a
recipe for its source and returns a small ``DiskResult``. Inside, a reader thread keeps the next
reads in flight, a small thread pool hashes and compresses (blake3 and zstd release the GIL), and
an upload pool overlaps pack uploads. Bounded queues bound memory: about
``READ_AHEAD × READ_RUN + BATCH_BYTES + (UPLOADS_IN_FLIGHT + 1) × pack_size`` per task, whatever
the disk size.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol

import psutil
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.engine.admission import ReadThrottle
from pipeline.engine.cbt_guard import check_unchanged, sample_unchanged
from pipeline.engine.dedup import KNOWN, MINE, THEIRS, ClaimTicket, DedupIndex, RepoLocation
from pipeline.engine.stats import StageClock
from pipeline.extents import Extent, block_offsets, block_runs
from pipeline.ops.damaged import damaged_chunk_ids
from pipeline.source.base import ChangedAreasError, ChangeIdInvalidError, DiskSource
from pipeline.store.chunks import EncodedChunk, PackWriter, encode_chunk
from pipeline.store.manifest import DiskManifest, merge_manifest

log = logging.getLogger(__name__)

READ_RUN = 8 << 20  # one read: large enough for a datastore to stream, small enough to bound memory
READ_AHEAD = 2
BATCH_BYTES = 16 << 20
UPLOADS_IN_FLIGHT = 4


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
    threads: int = 2,
    progress: Callable[[str, int], None] | None = None,
    lease_s: float = 30.0,
    admission: Any = None,
    datastore: str = "",
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
    rss = _PeakRss()
    try:
        throttle = ReadThrottle(admission, datastore or job.datastore) if admission is not None else None
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


class _PeakRss:
    """Samples this process's resident memory: the proof that a disk task's memory is bounded."""

    def __init__(self, interval: float = 0.05) -> None:
        self._proc = psutil.Process()
        self.base = self._proc.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.base


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
        self.zero_id: bytes = repo.chunk_id(bytes(self.block_size))
        self.progress = progress
        self.throttle = throttle
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="vmpump-cpu")
        self.uploads = ThreadPoolExecutor(UPLOADS_IN_FLIGHT, thread_name_prefix="vmpump-upload")
        self.upload_slots = threading.Semaphore(UPLOADS_IN_FLIGHT)
        self.in_flight: list[Future[None]] = []
        self.writer: PackWriter = repo.pack_writer()
        self.clock = StageClock()
        self.changed = _BlockLog()
        self.waiting: dict[bytes, list[int]] = {}  # chunk id → offsets whose upload another owner claimed
        self.full_read = job.previous_manifest is None
        self.full_read_reason = job.full_read_reason
        self.counts = dict.fromkeys(
            (
                "bytes_read",
                "blocks_read",
                "zero_blocks",
                "dedup_blocks",
                "new_chunks",
                "new_bytes",
                "stored_bytes",
                "packs",
                "guard_sampled",
                "guard_mismatches",
                "healed_blocks",
            ),
            0,
        )

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
            self._pipeline(self._batches(offsets))
            self._seal_and_upload(self.writer.seal())
            self._wait_uploads()
            self._settle_waiting()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)
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

    def _batches(self, offsets: list[int]) -> Iterator[list[tuple[int, memoryview]]]:
        """Blocks in read order, grouped in batches of about BATCH_BYTES; reads run ahead in a thread."""
        blocks: queue.Queue = queue.Queue(maxsize=READ_AHEAD)
        stop = threading.Event()

        def read_all() -> None:
            try:
                for run in block_runs(offsets, self.block_size, max(READ_RUN, self.block_size)):
                    if self.throttle is not None:  # the datastore is slow: the latency gate says wait
                        with self.clock.stage("admission_wait"):
                            self.throttle.pause()
                    length = min(run.length, self.capacity - run.offset)
                    with self.clock.stage("source_read", length):
                        data = memoryview(self.source.read(run.offset, length))
                    if len(data) != length:
                        raise RuntimeError(f"source returned {len(data)} bytes for a {length}-byte read")
                    while not stop.is_set():
                        try:
                            blocks.put((run.offset, data), timeout=0.5)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
                blocks.put(None)
            except BaseException as exc:  # handed to the consumer, which raises it
                blocks.put(exc)

        reader = threading.Thread(target=read_all, name="vmpump-reader", daemon=True)
        reader.start()
        batch: list[tuple[int, memoryview]] = []
        batch_bytes = 0
        try:
            while True:
                item = blocks.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                base, data = item
                for start in range(0, len(data), self.block_size):
                    block = data[start : start + self.block_size]
                    batch.append((base + start, block))
                    batch_bytes += len(block)
                    if batch_bytes >= BATCH_BYTES:
                        yield batch
                        batch, batch_bytes = [], 0
            if batch:
                yield batch
        finally:
            stop.set()
            reader.join(timeout=5)

    def _hash(self, block: memoryview) -> bytes | None:
        """The chunk id, or None for an all-zero block (a hole)."""
        start = time.thread_time()  # CPU time: on a busy proxy, wall time would count waiting for a core
        cid = self.repo.chunk_id(block)
        # Comparing ids is the cheap zero test: hashing runs at GB/s, a Python byte compare does not.
        zero = self.zero_id if len(block) == self.block_size else self.repo.chunk_id(bytes(len(block)))
        self.clock.add("hash", time.thread_time() - start, len(block))
        return None if cid == zero else cid

    def _encode(self, block: memoryview) -> EncodedChunk:
        start = time.thread_time()
        encoded = encode_chunk(block, self.level)
        self.clock.add("compress", time.thread_time() - start, len(block))
        return encoded

    def _pipeline(self, batches: Iterator[list[tuple[int, memoryview]]]) -> None:
        """Four batches in flight: while batch k hashes, the dedup claim of batch k-1 travels to
        the index actors, batch k-2 compresses and batch k-3 is packed, so the CPU pool never
        idles on an actor round trip."""
        hashing: deque[tuple[list[tuple[int, memoryview]], list[Future[bytes | None]]]] = deque()
        claiming: deque[tuple[dict[bytes, tuple[int, memoryview]], ClaimTicket | None]] = deque()
        compressing: deque[list[tuple[bytes, memoryview, Future[EncodedChunk]]]] = deque()
        for batch in batches:
            hashing.append((batch, [self.pool.submit(self._hash, blk) for _, blk in batch]))
            if len(hashing) > 1:
                claiming.append(self._claim(*hashing.popleft()))
            if len(claiming) > 1:
                compressing.append(self._compress(*claiming.popleft()))
            if len(compressing) > 1:
                self._pack(compressing.popleft())
        while hashing:
            claiming.append(self._claim(*hashing.popleft()))
        while claiming:
            compressing.append(self._compress(*claiming.popleft()))
        while compressing:
            self._pack(compressing.popleft())

    def _claim(
        self, batch: list[tuple[int, memoryview]], hashes: list[Future[bytes | None]]
    ) -> tuple[dict[bytes, tuple[int, memoryview]], ClaimTicket | None]:
        """Record the batch's ids and send the claim of its distinct non-zero ones."""
        ids = [f.result() for f in hashes]
        unique: dict[bytes, tuple[int, memoryview]] = {}  # a block seen twice in a batch is claimed once
        for (off, blk), cid in zip(batch, ids, strict=True):
            self.changed.add(off, cid)
            self.counts["bytes_read"] += len(blk)
            self.counts["blocks_read"] += 1
            if cid is None:
                self.counts["zero_blocks"] += 1
            else:
                self.counts["dedup_blocks"] += 1  # until the claim says this task uploads it
                unique.setdefault(cid, (off, blk))
        if self.progress is not None:
            self.progress(f"{self.job.vm_id}/{self.job.disk_key}", sum(len(b) for _, b in batch))
        return unique, self.index.claim_async(list(unique), self.owner) if unique else None

    def _compress(
        self, unique: dict[bytes, tuple[int, memoryview]], ticket: ClaimTicket | None
    ) -> list[tuple[bytes, memoryview, Future[EncodedChunk]]]:
        """Start compressing the blocks this task won the claim for."""
        if ticket is None:
            return []
        with self.clock.stage("dedup"):
            codes = ticket.result()
        new = []
        for (cid, (off, blk)), code in zip(unique.items(), codes, strict=True):
            if code == MINE:
                new.append((cid, blk, self.pool.submit(self._encode, blk)))
            elif code == THEIRS:
                self.waiting.setdefault(cid, []).append(off)
        self.counts["dedup_blocks"] -= len(new)
        return new

    def _pack(self, new: list[tuple[bytes, memoryview, Future[EncodedChunk]]]) -> None:
        for cid, blk, future in new:
            encoded = future.result()
            self.counts["new_chunks"] += 1
            self.counts["new_bytes"] += len(blk)
            self.counts["stored_bytes"] += len(encoded.payload)
            self._seal_and_upload(self.writer.add(cid, encoded))

    def _upload_new(self, new: list[tuple[bytes, memoryview]]) -> None:
        self._pack([(cid, blk, self.pool.submit(self._encode, blk)) for cid, blk in new])

    def _seal_and_upload(self, sealed) -> None:  # noqa: ANN001 - SealedPack | None
        if sealed is None:
            return
        self._reap_uploads()
        self.upload_slots.acquire()
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


class _BlockLog:
    """Every block read, in read (ascending offset) order: 41 bytes a block in flat buffers, not
    a dict of Python objects, so a multi-terabyte disk's log stays a small share of the task."""

    _HOLE = bytes(32)

    def __init__(self) -> None:
        self.offsets = array("q")
        self.ids = bytearray()
        self.holes = bytearray()

    def add(self, offset: int, chunk_id: bytes | None) -> None:
        self.offsets.append(offset)
        self.ids += chunk_id if chunk_id is not None else self._HOLE
        self.holes.append(chunk_id is None)

    def __len__(self) -> int:
        return len(self.offsets)

    def as_mapping(self) -> dict[int, bytes | None]:
        return {
            off: None if hole else bytes(self.ids[i * 32 : i * 32 + 32])
            for i, (off, hole) in enumerate(zip(self.offsets, self.holes, strict=True))
        }

    def stored_blocks(self) -> tuple[pa.Array, pa.Array]:
        """Offsets and ids of the non-hole blocks, as Arrow arrays (no per-block Python objects)."""
        n = len(self.offsets)
        offsets = pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(self.offsets.tobytes())])
        ids = pa.Array.from_buffers(pa.binary(32), n, [None, pa.py_buffer(bytes(self.ids))])
        keep = pc.equal(pa.Array.from_buffers(pa.uint8(), n, [None, pa.py_buffer(bytes(self.holes))]), 0)
        return offsets.filter(keep), ids.filter(keep)


def _without_previous(job: DiskJob) -> DiskJob:
    from dataclasses import replace

    return replace(job, previous_manifest=None)
