"""Disk sources: where a disk's bytes and its changed extents come from."""

from pipeline.source.base import ChangeIdInvalidError, DiskSource, SourceError

__all__ = ["ChangeIdInvalidError", "DiskSource", "SourceError"]
