"""Chunks and packs: encoding a block, grouping encoded chunks into pack objects, reading them back.

A pack is the payloads back to back, then a trailer listing every chunk in it, then a fixed
footer (see FORMAT.md, "Packs"). The trailer makes every pack self-describing, so the global index
can be rebuilt from the packs alone after a crash or a lost index.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import blake3
import zstandard

from pipeline.store.backend import ObjectStore
from pipeline.store.errors import ObjectCorruptError

Codec = Literal["raw", "zstd"]
CODEC_CODES: dict[str, int] = {"raw": 0, "zstd": 1}
CODEC_NAMES: dict[int, str] = {v: k for k, v in CODEC_CODES.items()}
PACK_MAGIC = b"VMPKv001"
_ENTRY = struct.Struct("<32sQIIB")  # chunk id, offset, length, raw length, codec
_FOOTER = struct.Struct("<32sII8s")  # BLAKE3 of the trailer, entry count, trailer length, magic
FOOTER_SIZE = _FOOTER.size
_local = threading.local()


@dataclass(frozen=True)
class EncodedChunk:
    codec: Codec
    raw_length: int
    payload: bytes


@dataclass(frozen=True)
class IndexEntry:
    chunk_id: bytes
    pack_id: str
    offset: int
    length: int
    raw_length: int
    codec: str


@dataclass(frozen=True)
class SealedPack:
    """A full pack. Its name and trailer are computed on first use, so the thread that uploads
    it pays for the hash, not the thread that fills the next pack."""

    parts: tuple[bytes, ...]
    rows: tuple[tuple[bytes, int, int, int, str], ...]  # chunk id, offset, length, raw length, codec

    @cached_property
    def tail(self) -> bytes:
        """The trailer (one entry per chunk) and the fixed footer that end the pack."""
        trailer = b"".join(
            _ENTRY.pack(cid, off, length, raw, CODEC_CODES[codec])
            for cid, off, length, raw, codec in self.rows
        )
        return trailer + _FOOTER.pack(
            blake3.blake3(trailer).digest(), len(self.rows), len(trailer), PACK_MAGIC
        )

    def buffers(self) -> list[bytes]:
        """The pack's bytes as parts in order: written as they are, never joined into one copy."""
        return [*self.parts, self.tail]

    @cached_property
    def pack_id(self) -> str:
        """The hex BLAKE3 of the trailer and footer: they name every chunk in the pack by content,
        so hashing the payloads a second time would add nothing but CPU time."""
        return blake3.blake3(self.tail).hexdigest()

    @property
    def data(self) -> bytes:
        return b"".join(self.buffers())

    @property
    def entries(self) -> tuple[IndexEntry, ...]:
        return tuple(
            IndexEntry(cid, self.pack_id, off, n, raw, codec) for cid, off, n, raw, codec in self.rows
        )

    @property
    def key(self) -> str:
        return pack_key(self.pack_id)


def pack_key(pack_id: str) -> str:
    # Two-hex fan-out keeps directories of a local repository small.
    return f"packs/{pack_id[:2]}/{pack_id}"


def is_all_zero(block: bytes | memoryview) -> bool:
    """True when every byte is zero (such blocks are manifest holes, never stored)."""
    view = memoryview(block).cast("B")
    # bytes.startswith takes any buffer and runs memcmp: ~20x faster than comparing memoryviews.
    return _zeros(len(view)).startswith(view)


def _zeros(n: int) -> bytes:
    buf = getattr(_local, "zeros", b"")
    if len(buf) < n:
        buf = _local.zeros = bytes(n)
    return buf


SAMPLES = 8  # slices of a block tried before compressing it whole
SAMPLE_SIZE = 4 << 10
SAMPLE_GAIN = 0.9  # a slice that shrinks below this share of its size: the block is worth compressing


def encode_chunk(plaintext: bytes | memoryview, level: int) -> EncodedChunk:
    """zstd at ``level``, or the plaintext itself when compression does not shrink it.

    Blocks of already-compressed or encrypted data (media, archives, encrypted volumes) are common
    on VM disks; zstd cannot shrink them and still reads all of them. So a large block is first
    sampled: ``SAMPLES`` slices spread over it, each compressed alone at the fastest level. Only
    if one of them shrinks is the block compressed whole, else it is stored raw: the same early
    abort borg (``auto``) and ZFS use. A zero run of an eighth of the block or more is always seen.

    Pure and thread-safe (one compressor per thread); zstandard releases the GIL while it works.
    """
    n = len(plaintext)
    if n >= 2 * SAMPLES * SAMPLE_SIZE and not _worth_compressing(memoryview(plaintext).cast("B")):
        return EncodedChunk("raw", n, bytes(plaintext))
    compressed = _compressor(level).compress(plaintext)
    if len(compressed) < n:
        return EncodedChunk("zstd", n, compressed)
    return EncodedChunk("raw", n, bytes(plaintext))


def _worth_compressing(block: memoryview) -> bool:
    probe = _compressor(1)
    step = len(block) // SAMPLES
    for i in range(SAMPLES):
        sample = block[i * step : i * step + SAMPLE_SIZE]
        if len(probe.compress(sample)) < SAMPLE_GAIN * SAMPLE_SIZE:
            return True
    return False


def _compressor(level: int) -> zstandard.ZstdCompressor:
    compressors = getattr(_local, "compressors", None)
    if compressors is None:
        compressors = _local.compressors = {}
    compressor = compressors.get(level)
    if compressor is None:
        compressor = compressors[level] = zstandard.ZstdCompressor(level=level, write_content_size=True)
    return compressor


def decode_chunk(codec: str, payload: bytes, raw_length: int) -> bytes:
    """The plaintext of a payload; raises zstandard.ZstdError or ValueError when it is damaged."""
    if codec == "raw":
        return payload
    if codec == "zstd":
        decompressor = getattr(_local, "decompressor", None)
        if decompressor is None:
            decompressor = _local.decompressor = zstandard.ZstdDecompressor()
        return decompressor.decompress(payload, max_output_size=raw_length)
    raise ValueError(f"unknown codec {codec!r}")


class PackWriter:
    """Collects encoded chunks into packs of about ``pack_size`` bytes. One per worker thread."""

    def __init__(self, store: ObjectStore, pack_size: int) -> None:
        self._store = store
        self._pack_size = pack_size
        self._parts: list[bytes] = []
        self._pending: list[tuple[bytes, int, int, int, str]] = []
        self._ids: set[bytes] = set()
        self._size = 0

    @property
    def pending_bytes(self) -> int:
        return self._size

    def add(self, chunk_id: bytes, encoded: EncodedChunk) -> SealedPack | None:
        """Append a chunk; returns the sealed pack once the target size is reached."""
        if len(chunk_id) != 32:
            raise ValueError("a chunk id is 32 bytes")
        if chunk_id in self._ids:  # the same block twice in one pack: keep the first
            return None
        self._ids.add(chunk_id)
        payload = encoded.payload
        self._pending.append((chunk_id, self._size, len(payload), encoded.raw_length, encoded.codec))
        self._parts.append(payload)
        self._size += len(payload)
        return self.seal() if self._size >= self._pack_size else None

    def seal(self) -> SealedPack | None:
        """The remainder as a pack (None when empty); the writer starts a fresh pack."""
        if not self._pending:
            return None
        sealed = SealedPack(tuple(self._parts), tuple(self._pending))
        self._parts, self._pending, self._ids, self._size = [], [], set(), 0
        return sealed

    def upload(self, sealed: SealedPack) -> list[IndexEntry]:
        """Put the pack object (durable when this returns) and return its index entries.

        Safe to call from several threads at once; the pack's name is the BLAKE3 of its bytes, so
        uploading the same pack twice writes the same object.
        """
        self._store.put(sealed.key, sealed.buffers(), self_checking=True)
        return list(sealed.entries)


def read_pack_entries(store: ObjectStore, pack_id: str) -> list[IndexEntry]:
    """The index entries recorded in a pack's own trailer (two ranged reads)."""
    key = pack_key(pack_id)
    size = store.size(key)
    if size is None or size < FOOTER_SIZE:
        raise ObjectCorruptError(f"pack {pack_id} is missing or too short", "run verify; the pack is lost")
    footer = store.get(key, size - FOOTER_SIZE, FOOTER_SIZE)
    digest, count, trailer_len, magic = _FOOTER.unpack(footer)
    if magic != PACK_MAGIC or trailer_len != count * _ENTRY.size or trailer_len > size - FOOTER_SIZE:
        raise ObjectCorruptError(
            f"pack {pack_id} has no valid footer", "the pack is damaged or not a vmpump pack"
        )
    trailer = store.get(key, size - FOOTER_SIZE - trailer_len, trailer_len)
    if blake3.blake3(trailer).digest() != digest:
        raise ObjectCorruptError(
            f"the trailer of pack {pack_id} is damaged", "run verify; the pack is damaged"
        )
    if blake3.blake3(trailer + footer).hexdigest() != pack_id:
        raise ObjectCorruptError(
            f"the trailer of pack {pack_id} does not match the pack's name", "run verify; the pack is damaged"
        )
    entries = []
    for cid, off, length, raw, code in _ENTRY.iter_unpack(trailer):
        entries.append(IndexEntry(cid, pack_id, off, length, raw, CODEC_NAMES.get(code, f"unknown-{code}")))
    return entries
