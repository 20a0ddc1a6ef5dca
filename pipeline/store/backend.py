"""The object-store seam: a handful of methods every backend (local directory, S3) provides.

Keys are relative, ``/``-separated paths such as ``packs/ab/ab12...``. ``put`` is atomic: a reader
sees either no object or the whole object, never a prefix of it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Protocol, runtime_checkable
from urllib.parse import unquote, urlparse

from pipeline.errors import ConfigError

_KEY = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


# An object's body: its bytes, or its parts in order (a pack is written without joining them).
Body = bytes | memoryview | Sequence[bytes | memoryview]


def body_bytes(data: Body) -> bytes | memoryview:
    """The body as one buffer (for stores that need one)."""
    return data if isinstance(data, bytes | memoryview) else b"".join(data)


@runtime_checkable
class ObjectStore(Protocol):
    url: str

    def put(self, key: str, data: Body, *, self_checking: bool = False) -> None:
        """Store ``data`` (bytes, or a sequence of parts in order) under ``key`` atomically and
        durably, replacing any object there. ``self_checking``: the object proves its own integrity
        (a pack: chunk ids and a trailer hash), so the store need not add a checksum of its own."""
        ...

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        """The object's bytes, or ``length`` bytes from ``offset``; ObjectMissingError if absent."""
        ...

    def size(self, key: str) -> int | None:
        """The object's size in bytes, or None when there is no such object."""
        ...

    def list_keys(self, prefix: str = "") -> list[str]:
        """Every key starting with ``prefix``, sorted."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; removing a missing object is not an error."""
        ...


def check_key(key: str) -> str:
    # One key grammar for every backend, so a repository copies between them unchanged.
    if not _KEY.match(key) or any(part in (".", "..") for part in key.split("/")):
        raise ValueError(f"invalid object key {key!r}")
    return key


def open_store(
    url: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    addressing_style: str | None = None,
    max_attempts: int = 8,
) -> ObjectStore:
    """An object store for ``file:///path`` or ``s3://bucket/prefix``.

    The S3 options are ignored for ``file://``; credentials come from the standard boto3 chain.
    """
    parsed = urlparse(url)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"file URL with a host: {url}", "write file:///absolute/path (three slashes)")
        from pipeline.store.local import LocalStore

        return LocalStore(unquote(parsed.path))
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigError(f"S3 URL without a bucket: {url}", "write s3://bucket/prefix")
        from pipeline.store.s3 import S3Store

        return S3Store(
            parsed.netloc,
            parsed.path.strip("/"),
            endpoint_url=endpoint_url,
            region=region,
            addressing_style=addressing_style or "auto",
            max_attempts=max_attempts,
        )
    raise ConfigError(f"unsupported repository URL: {url}", "use file:///path or s3://bucket/prefix")
