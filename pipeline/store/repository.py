"""The repository: config, chunk ids, packs, the global index, manifests and restore points.

Object layout and every encoding are specified in FORMAT.md next to this file; the two change
together. Layers below (backends) know nothing of this; layers above (engine, ops) call only this.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone

import blake3
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import ConfigError
from pipeline.store.backend import ObjectStore
from pipeline.store.chunks import IndexEntry, PackWriter, decode_chunk, pack_key, read_pack_entries
from pipeline.store.errors import (
    ChunkCorruptError,
    ObjectCorruptError,
    ObjectMissingError,
    RepositoryError,
    RepositoryExistsError,
    RepositoryNotFoundError,
    RestorePointNotFoundError,
    UnsupportedFormatError,
)
from pipeline.store.index import (
    INDEX_PREFIX,
    ChunkIndex,
    decode_parquet,
    encode_parquet,
    entries_table,
    segment_key,
)
from pipeline.store.locks import LockKind, RepositoryLock
from pipeline.store.manifest import MANIFEST_PREFIX, DiskManifest
from pipeline.store.restore_point import POINT_PREFIX, RestorePoint

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
CONFIG_KEY = "config"
POINT_READERS = 16  # restore point records read at once (round trips dominate on S3)
MIN_BLOCK_SIZE, MAX_BLOCK_SIZE = 256 << 10, 8 << 20


@dataclass(frozen=True)
class RepoConfig:
    format_version: int
    repo_id: str
    block_size: int
    compression_level: int
    pack_size: int
    created: str  # ISO 8601, UTC
    encryption: str | None = None  # seam: "none" today; a keyed chunk id comes with encryption


class Repository:
    def __init__(self, store: ObjectStore, config: RepoConfig) -> None:
        self.store = store
        self.config = config
        self._chunk_key: bytes | None = None  # keyed BLAKE3 once the repository is encrypted
        self._guard = threading.Lock()
        self._segments: dict[str, pa.Table] = {}
        self._index: ChunkIndex | None = None
        self._listed = False

    # ---- lifecycle -------------------------------------------------------------------------
    @classmethod
    def init(
        cls,
        store: ObjectStore,
        *,
        block_size: int = 1 << 20,
        compression_level: int = 3,
        pack_size: int = 32 << 20,
    ) -> Repository:
        if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE or block_size & (block_size - 1):
            raise ConfigError(
                f"block size {block_size} is not a power of two between 256 KiB and 8 MiB",
                "the default is 1 MiB",
            )
        if not -7 <= compression_level <= 22:
            raise ConfigError(
                f"zstd level {compression_level} is out of range", "use 1..22 (3 is the default)"
            )
        if pack_size < 64 << 10:
            raise ConfigError(
                f"pack size {pack_size} is too small", "use tens of MiB (32 MiB is the default)"
            )
        if store.size(CONFIG_KEY) is not None:
            raise RepositoryExistsError(
                f"a repository already exists at {store.url}", "use it as it is, or choose an empty location"
            )
        config = RepoConfig(
            FORMAT_VERSION,
            secrets.token_hex(16),
            block_size,
            compression_level,
            pack_size,
            datetime.now(timezone.utc).isoformat(),
        )
        store.put(CONFIG_KEY, json.dumps(asdict(config), indent=1).encode())
        return cls(store, config)

    @classmethod
    def open(cls, store: ObjectStore) -> Repository:
        try:
            raw = store.get(CONFIG_KEY)
        except ObjectMissingError:
            raise RepositoryNotFoundError(
                f"no vmpump repository at {store.url}", "check the URL, or create one with `vmpump init`"
            ) from None
        try:
            body = json.loads(raw)
            version = body["format_version"]
        except (ValueError, KeyError, TypeError):
            raise UnsupportedFormatError(
                f"{store.url}/{CONFIG_KEY} is not a vmpump repository config", "point at a vmpump repository"
            ) from None
        if version != FORMAT_VERSION:
            raise UnsupportedFormatError(
                f"the repository at {store.url} has format version {version}; "
                f"this vmpump reads version {FORMAT_VERSION}",
                "use the vmpump release that wrote it",
            )
        config = RepoConfig(**body)
        if config.encryption not in (None, "none"):
            raise UnsupportedFormatError(
                f"the repository at {store.url} is encrypted ({config.encryption})",
                "this vmpump cannot read encrypted repositories",
            )
        return cls(store, config)

    def lock(
        self, kind: LockKind = "shared", *, owner: str = "vmpump", lease: timedelta | None = None
    ) -> RepositoryLock:
        """Take a shared (backup) or exclusive (prune, gc) lock; refresh it within the lease."""
        return RepositoryLock(self.store, kind, owner=owner, lease=lease or timedelta(minutes=15)).acquire()

    # ---- chunks and packs ------------------------------------------------------------------
    def chunk_id(self, plaintext: bytes | memoryview) -> bytes:
        if self._chunk_key is not None:
            return blake3.blake3(plaintext, key=self._chunk_key).digest()
        return blake3.blake3(plaintext).digest()

    def pack_writer(self) -> PackWriter:
        return PackWriter(self.store, self.config.pack_size)

    def write_index_segment(self, entries: Sequence[IndexEntry]) -> str:
        """Store ``entries`` as one index segment (durable on return); returns its key."""
        table = entries_table(entries)
        name, data = encode_parquet(table)
        key = segment_key(name)
        self.store.put(key, data)
        with self._guard:
            if key not in self._segments:
                self._segments[key] = table
                self._index = None
        return key

    def recover_unindexed_packs(self) -> list[IndexEntry]:
        """Index packs a crashed run uploaded but never indexed, from their trailers."""
        indexed = self.chunk_index(refresh=True).pack_ids()
        present = {key.rsplit("/", 1)[-1] for key in self.store.list_keys("packs/")}
        entries: list[IndexEntry] = []
        for pack_id in sorted(present - indexed):
            try:
                entries.extend(read_pack_entries(self.store, pack_id))
            except ObjectCorruptError as e:  # left for verify and gc; a backup need not stop here
                log.warning("skipping unreadable pack %s: %s", pack_id, e)
        if entries:
            self.write_index_segment(entries)
        return entries

    def chunk_index(self, *, refresh: bool = False) -> ChunkIndex:
        """The global index as loaded; ``refresh`` first reads segments other writers added."""
        with self._guard:
            if refresh or not self._listed:
                self._listed = True
                for key in self.store.list_keys(INDEX_PREFIX):
                    if key not in self._segments:
                        self._segments[key] = decode_parquet(key, self.store.get(key))
                        self._index = None
            if self._index is None:
                self._index = ChunkIndex(self._segments.values())
            return self._index

    def known_chunk_ids(self) -> pa.Array:
        """Distinct ids (binary(32)) of every chunk in the global index."""
        return self.chunk_index(refresh=True).chunk_ids()

    def lookup(self, chunk_id: bytes) -> IndexEntry | None:
        entry = self.chunk_index().lookup(chunk_id)
        return entry if entry is not None else self.chunk_index(refresh=True).lookup(chunk_id)

    def read_chunk(self, chunk_id: bytes) -> bytes:
        """The plaintext of a chunk, checked against its id."""
        entry = self.lookup(chunk_id)
        if entry is None:
            raise ObjectMissingError(
                f"chunk {chunk_id.hex()} is in no index segment of {self.store.url}",
                "the repository is incomplete; run verify",
            )
        return self.read_entry(entry)

    def read_entry(self, entry: IndexEntry) -> bytes:
        payload = self.read_pack_range(entry.pack_id, entry.offset, entry.length)
        try:
            plain = decode_chunk(entry.codec, payload, entry.raw_length)
        except Exception:  # zstandard raises its own error type for damaged frames
            plain = None
        if plain is None or len(plain) != entry.raw_length or self.chunk_id(plain) != entry.chunk_id:
            raise ChunkCorruptError(
                f"chunk {entry.chunk_id.hex()} in pack {entry.pack_id} at offset {entry.offset} is damaged",
                "run verify; restore from another copy of the repository if it has one",
            )
        return plain

    def read_pack_range(self, pack_id: str, offset: int, length: int) -> bytes:
        return self.store.get(pack_key(pack_id), offset, length)

    # ---- manifests and restore points ------------------------------------------------------
    def write_manifest(self, manifest: DiskManifest) -> str:
        if manifest.block_size != self.config.block_size:
            raise ValueError(f"manifest block size {manifest.block_size} is not the repository's")
        name, data = encode_parquet(manifest.to_arrow())
        key = f"{MANIFEST_PREFIX}{name}.parquet"
        self.store.put(key, data)
        return key

    def read_manifest(self, key: str) -> DiskManifest:
        return DiskManifest.from_arrow(decode_parquet(key, self.store.get(key)))

    def commit_restore_point(
        self, point: RestorePoint, *, unindexed: Callable[[pa.Array], int] | None = None
    ) -> None:
        """Write the record that makes ``point`` visible, after checking all it names is stored.

        ``unindexed`` counts the ids of an array the index does not hold. By default the index
        segments are read and merged, a cost that grows with the repository; a backup passes its
        dedup index shards' count instead, which costs the size of the point's disks only.
        """
        if unindexed is None:
            known = self.chunk_index(refresh=True).chunk_ids()

            def not_in_segments(ids: pa.Array) -> int:
                return pc.sum(pc.invert(pc.is_in(ids, value_set=known))).as_py() or 0

            unindexed = not_in_segments
        for disk in point.disks:
            missing = unindexed(self.read_manifest(disk.manifest_key).referenced_chunk_ids())
            if missing:
                raise RepositoryError(
                    f"restore point {point.id} disk {disk.disk_key} references {missing} unindexed chunks",
                    "write the index segments of every uploaded pack before committing",
                )
        self.store.put(point.key, point.to_json())

    def restore_points(self) -> list[RestorePoint]:
        """Every restore point, by time. Records are small and one GET each, so on an object store
        the time is round trips: they are read ``POINT_READERS`` at a time."""
        keys = self.store.list_keys(POINT_PREFIX)
        if len(keys) <= 1:
            points = [RestorePoint.from_json(self.store.get(key)) for key in keys]
        else:
            with ThreadPoolExecutor(
                min(POINT_READERS, len(keys)), thread_name_prefix="vmpump-points"
            ) as pool:
                points = list(pool.map(lambda key: RestorePoint.from_json(self.store.get(key)), keys))
        return sorted(points, key=lambda p: (p.created, p.id))

    def restore_point(self, ref: str) -> RestorePoint:
        """By id, unique id prefix, or ``latest``."""
        points = self.restore_points()
        if ref == "latest":
            if not points:
                raise RestorePointNotFoundError(
                    f"no restore points in {self.store.url}", "run a backup first"
                )
            return points[-1]
        matches = [p for p in points if p.id == ref] or [p for p in points if ref and p.id.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if matches:
            raise RestorePointNotFoundError(
                f"restore point prefix {ref!r} is ambiguous", "give more characters"
            )
        raise RestorePointNotFoundError(
            f"no restore point {ref!r} in {self.store.url}", "list them with `vmpump list`"
        )
