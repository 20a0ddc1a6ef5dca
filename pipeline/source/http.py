"""Datastore HTTP transport: ranged GETs of a file through vCenter's ``/folder`` endpoint.

``https://vcenter/folder/<path>?dcPath=<datacenter>&dsName=<datastore>`` with the SOAP session
cookie. A persistent connection pool keeps TLS handshakes off the read path; transient failures
(connection resets, 5xx) are retried with backoff; every answer must be exactly the range asked for.
"""

from __future__ import annotations

import ssl
import time
import urllib.parse
from collections.abc import Callable

import urllib3

from pipeline.source.base import SourceError

SESSION_COOKIE = "vmware_soap_session"
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


def folder_url(base_url: str, datacenter: str, datastore: str, path_in_datastore: str) -> str:
    quoted = urllib.parse.quote(path_in_datastore.lstrip("/"))
    query = urllib.parse.urlencode({"dcPath": datacenter, "dsName": datastore})
    return f"{base_url.rstrip('/')}/folder/{quoted}?{query}"


class HttpRangeTransport:
    """Exact-length range reads of one datastore file; safe to share between threads."""

    def __init__(
        self,
        url: str,
        session_cookie: Callable[[], str],
        ssl_context: ssl.SSLContext | None = None,
        on_unauthorized: Callable[[], None] | None = None,
        pool_size: int = 8,
        retries: int = 5,
        timeout_s: float = 120.0,
    ) -> None:
        self.url = url
        self._cookie = session_cookie
        self._on_unauthorized = on_unauthorized
        self._retries = retries
        self._pool = urllib3.PoolManager(
            num_pools=2,
            maxsize=pool_size,
            block=True,
            ssl_context=ssl_context,
            timeout=urllib3.Timeout(connect=min(30.0, timeout_s), read=timeout_s),
            retries=False,  # retried here, where the exact-length check lives too
        )
        self.requests = 0

    def read(self, offset: int, length: int) -> bytes:
        if length == 0:
            return b""
        delay = 0.1
        reauthorized = False
        attempt = 0
        while True:
            attempt += 1
            problem = ""
            try:
                data, status = self._get(offset, length)
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                data, status, problem = b"", 0, f"{type(exc).__name__}: {exc}"
            if status == 206 and len(data) == length:
                return data
            if status in (401, 403) and self._on_unauthorized is not None and not reauthorized:
                reauthorized = True
                self._on_unauthorized()
                continue
            if status == 206:
                problem = f"got {len(data)} of {length} bytes"
            elif status == 200:
                raise SourceError(
                    f"{self._where()} ignored the byte range (HTTP 200)", "the server must support Range"
                )
            elif status == 416:
                raise SourceError(f"read {offset}+{length} lies beyond the end of {self._where()}")
            elif status and status not in TRANSIENT_STATUS:
                raise SourceError(
                    f"{self._where()} answered HTTP {status} to a range read",
                    "check the session's privileges (Datastore.Browse) and that the file exists",
                )
            problem = problem or f"HTTP {status}"
            if attempt > self._retries:
                raise SourceError(
                    f"reading {offset}+{length} from {self._where()} failed {attempt} times ({problem})",
                    "check the network path to vCenter/ESXi and the datastore's health",
                )
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _get(self, offset: int, length: int) -> tuple[bytes, int]:
        self.requests += 1
        headers = {
            "Range": f"bytes={offset}-{offset + length - 1}",
            "Cookie": f'{SESSION_COOKIE}="{self._cookie()}"',
        }
        resp = self._pool.request("GET", self.url, headers=headers, preload_content=False)
        try:
            if resp.status != 206:
                resp.drain_conn()
                return b"", resp.status
            data = resp.read(length)
            if len(data) == length and resp.read(1):
                return data + b"?", resp.status  # longer than asked: reported as a length mismatch
            return data, resp.status
        finally:
            resp.release_conn()

    def size(self) -> int:
        """The file's length, from a one-byte range read's Content-Range."""
        headers = {"Range": "bytes=0-0", "Cookie": f'{SESSION_COOKIE}="{self._cookie()}"'}
        resp = self._pool.request("GET", self.url, headers=headers)
        content_range = resp.headers.get("Content-Range", "")
        if resp.status != 206 or "/" not in content_range:
            raise SourceError(f"{self._where()} answered HTTP {resp.status} without a Content-Range")
        return int(content_range.rsplit("/", 1)[1])

    def _where(self) -> str:
        return self.url.split("?", 1)[0]

    def close(self) -> None:
        self._pool.clear()
