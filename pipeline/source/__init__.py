"""Disk sources: where a disk's bytes and its changed extents come from."""

from pipeline.source.base import ChangedAreasError, ChangeIdInvalidError, DiskSource, SourceError

__all__ = ["ChangedAreasError", "ChangeIdInvalidError", "DiskSource", "SourceError"]
