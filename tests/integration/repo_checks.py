"""What the engine tests check in a repository: a disk rebuilt from its manifest, chunk by chunk."""

from __future__ import annotations

from pipeline.store.repository import Repository


def restored_bytes(repo: Repository, manifest_key: str) -> bytes:
    """The disk as the manifest describes it, every chunk read (and hash-checked) from its pack."""
    manifest = repo.read_manifest(manifest_key)
    out = bytearray(manifest.capacity)
    for offset, length, cid in manifest.blocks():
        data = repo.read_chunk(cid)
        assert len(data) == length
        out[offset : offset + length] = data
    return bytes(out)
