"""The repository: object-store backends, packs, the chunk index, manifests, restore points.

The format is specified in FORMAT.md in this folder. Import from the modules, or from here:
"""

from pipeline.store.backend import ObjectStore, open_store
from pipeline.store.chunks import EncodedChunk, IndexEntry, PackWriter, SealedPack, encode_chunk, is_all_zero
from pipeline.store.manifest import DiskManifest, merge_manifest
from pipeline.store.repository import RepoConfig, Repository
from pipeline.store.restore_point import DiskRecord, RestorePoint, VmRef

__all__ = [
    "DiskManifest",
    "DiskRecord",
    "EncodedChunk",
    "IndexEntry",
    "ObjectStore",
    "PackWriter",
    "RepoConfig",
    "Repository",
    "RestorePoint",
    "SealedPack",
    "VmRef",
    "encode_chunk",
    "is_all_zero",
    "merge_manifest",
    "open_store",
]
