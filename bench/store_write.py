"""Write a synthetic disk image through the repository to a local directory and to a moto server.

The image is 30% zero blocks, 10% repeats of earlier blocks, and the rest half text-like
(compressible) and half random. Printed figures are ratios against baselines measured in the
same run on the same buffer: plain BLAKE3+zstd (the CPU floor of the write path) and a plain
boto3 put loop of the same number of bytes (the S3 floor).

    /work/main/.venv/bin/python bench/store_write.py [--size-mib 1024] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import blake3
import boto3
import zstandard

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import moto_server  # noqa: E402

from pipeline.store.backend import ObjectStore, open_store  # noqa: E402
from pipeline.store.chunks import encode_chunk, is_all_zero  # noqa: E402
from pipeline.store.manifest import DiskManifest  # noqa: E402
from pipeline.store.repository import Repository  # noqa: E402

BLOCK = 1 << 20
MIB = 1 << 20


def make_image(size_mib: int, seed: int = 7) -> bytearray:
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(2, 9)).hex().encode() for _ in range(5000)]
    text_pool = b" ".join(rng.choice(words) for _ in range(900_000))[: 8 * MIB]
    image = bytearray(size_mib * BLOCK)
    written: list[int] = []
    for i in range(size_mib):
        r = rng.random()
        at = i * BLOCK
        if r < 0.30:
            continue  # zero block
        if r < 0.40 and written:
            src = rng.choice(written)
            image[at : at + BLOCK] = image[src : src + BLOCK]
        elif r < 0.70:
            start = rng.randrange(len(text_pool) - BLOCK)
            image[at : at + BLOCK] = b"%08d" % i + text_pool[start + 8 : start + BLOCK]
        else:
            image[at : at + BLOCK] = rng.randbytes(BLOCK)
        written.append(at)
    return image


def baseline_hash_compress(image: bytearray, workers: int) -> float:
    view = memoryview(image)

    def work(lo: int, hi: int) -> None:
        z = zstandard.ZstdCompressor(level=3)
        for at in range(lo, hi, BLOCK):
            blake3.blake3(view[at : at + BLOCK]).digest()
            z.compress(view[at : at + BLOCK])

    return _timed_split(len(image), workers, work)


def _timed_split(size: int, workers: int, work) -> float:
    per = (size // BLOCK + workers - 1) // workers * BLOCK
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda w: work(w * per, min(size, (w + 1) * per)), range(workers)))
    return time.perf_counter() - t0


def write_through_repository(repo: Repository, image: bytearray, workers: int) -> float:
    """The engine's per-disk work, in threads: zero check, id, dedup, zstd, pack, upload."""
    view = memoryview(image)
    seen: set[bytes] = set(repo.known_chunk_ids().to_pylist())
    seen_lock = threading.Lock()
    blocks: dict[int, bytes] = {}
    entries = []
    uploads = ThreadPoolExecutor(2)  # uploads overlap hashing and compression, as in the engine
    in_flight = threading.BoundedSemaphore(4)  # at most 4 sealed packs held in memory

    def upload(writer, sealed) -> list:
        try:
            return writer.upload(sealed)
        finally:
            in_flight.release()

    def work(lo: int, hi: int) -> None:
        writer = repo.pack_writer()
        mine = []
        pending = []
        for at in range(lo, hi, BLOCK):
            block = view[at : at + BLOCK]
            if is_all_zero(block):
                continue
            chunk_id = repo.chunk_id(block)
            blocks[at] = chunk_id
            with seen_lock:
                if chunk_id in seen:
                    continue
                seen.add(chunk_id)
            if sealed := writer.add(chunk_id, encode_chunk(block, repo.config.compression_level)):
                in_flight.acquire()
                pending.append(uploads.submit(upload, writer, sealed))
        if sealed := writer.seal():
            in_flight.acquire()
            pending.append(uploads.submit(upload, writer, sealed))
        for future in pending:
            mine += future.result()
        entries.extend(mine)

    t0 = time.perf_counter()
    _timed_split(len(image), workers, work)
    uploads.shutdown()
    repo.write_index_segment(entries)
    manifest = DiskManifest.from_blocks(
        "disk0", capacity=len(image), block_size=BLOCK, change_id=None, blocks=blocks
    )
    repo.write_manifest(manifest)
    return time.perf_counter() - t0


def stored_bytes(store: ObjectStore) -> int:
    return sum(store.size(k) or 0 for k in store.list_keys())


def baseline_put_loop(client, bucket: str, total: int, object_size: int, workers: int) -> float:
    body = os.urandom(object_size)
    count = max(1, total // object_size)

    def put(i: int) -> None:
        client.put_object(Bucket=bucket, Key=f"baseline/{i}", Body=body)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(put, range(count)))
    return (time.perf_counter() - t0) * total / (count * object_size)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    for name, value in {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(name, value)

    image = make_image(args.size_mib)
    logical = len(image)
    gbs = lambda seconds: logical / seconds / 1e9  # noqa: E731
    print(f"image: {args.size_mib} MiB, block 1 MiB, {args.workers} worker threads, {os.cpu_count()} cpus")

    t_cpu = baseline_hash_compress(image, args.workers)
    print(f"baseline blake3+zstd-3 over every block: {gbs(t_cpu):.2f} GB/s")

    with tempfile.TemporaryDirectory(prefix="vmpump-bench-") as tmp:
        store = open_store(Path(tmp).as_uri())
        repo = Repository.init(store)
        t_local = write_through_repository(repo, image, args.workers)
        stored = stored_bytes(store)
    print(
        f"local dir : {gbs(t_local):.2f} GB/s logical = {t_cpu / t_local:.2f}x baseline cpu; "
        f"written {logical / MIB:.0f} MiB, stored {stored / MIB:.0f} MiB ({stored / logical:.1%})"
    )

    with moto_server() as endpoint:
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="bench")
        store = open_store("s3://bench/repo", endpoint_url=endpoint, addressing_style="path")
        repo = Repository.init(store)
        t_s3 = write_through_repository(repo, image, args.workers)
        stored = stored_bytes(store)
        t_put = baseline_put_loop(client, "bench", stored, 32 * MIB, args.workers)
    print(
        f"moto S3   : {gbs(t_s3):.2f} GB/s logical = {t_cpu / t_s3:.2f}x baseline cpu; "
        f"written {logical / MIB:.0f} MiB, stored {stored / MIB:.0f} MiB ({stored / logical:.1%}); "
        f"plain boto3 puts of the stored bytes take {t_put:.1f} s vs {t_s3:.1f} s through the repository "
        f"({t_put / t_s3:.2f}x)"
    )


if __name__ == "__main__":
    main()
