"""The ``DiskSource`` seam: the only way the pipeline sees a disk.

A source is bound to one disk as it stood at one point in time (for vSphere: the disk of a
snapshot). It knows nothing of the repository.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from pipeline.errors import VmpumpError
from pipeline.extents import Extent


class SourceError(VmpumpError):
    """A disk could not be read."""


class ChangeIdInvalidError(SourceError):
    """The changeId of the previous restore point is unknown to the source (CBT was reset)."""


class ChangedAreasError(SourceError):
    """The source's answer about changed areas cannot be trusted (it does not cover the disk)."""


@runtime_checkable
class DiskSource(Protocol):
    @property
    def capacity(self) -> int:
        """Disk size in bytes."""
        ...

    @property
    def change_id(self) -> str | None:
        """Opaque change marker of the state being read, to store with the restore point.

        ``None`` when the source cannot do incrementals.
        """
        ...

    def changed_extents(self, since: str | None) -> list[Extent]:
        """Extents that changed since the change marker ``since``; all allocated extents if ``None``.

        Raises ``ChangeIdInvalidError`` when ``since`` is not usable; the caller then reads in full.
        """
        ...

    def read(self, offset: int, length: int) -> bytes | memoryview:
        """Exactly ``length`` bytes at ``offset`` (a read past the end is an error).

        A memoryview (of a page-cache mapping, say) saves a copy; callers must not keep it past
        ``close``.
        """
        ...

    def close(self) -> None: ...
