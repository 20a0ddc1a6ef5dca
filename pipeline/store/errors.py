"""Errors of the repository room: each names what went wrong and what a user can do about it."""

from __future__ import annotations

from pipeline.errors import VmpumpError


class StoreError(VmpumpError):
    """The object store (local directory or S3) refused or failed an operation."""


class BucketNotFoundError(StoreError):
    """The S3 bucket named in the repository URL does not exist."""


class AccessDeniedError(StoreError):
    """Credentials are missing, wrong, or lack permission for the repository location."""


class EndpointUnreachableError(StoreError):
    """The S3 endpoint did not answer (wrong URL, DNS, firewall, server down)."""


class StoreFullError(StoreError):
    """The target file system has no space left."""


class ObjectMissingError(StoreError):
    """An object the repository needs is not in the store."""


class ObjectCorruptError(StoreError):
    """An object's bytes do not match the checksum recorded when it was written."""


class ChunkCorruptError(ObjectCorruptError):
    """A chunk read from a pack does not hash to its chunk id."""


class RepositoryError(VmpumpError):
    """The repository itself is missing, already there, or in a format this version cannot read."""


class RepositoryExistsError(RepositoryError):
    pass


class RepositoryNotFoundError(RepositoryError):
    pass


class UnsupportedFormatError(RepositoryError):
    pass


class RestorePointNotFoundError(RepositoryError):
    pass


class RepositoryLockedError(RepositoryError):
    """Another process holds a lock that conflicts with the one asked for."""
