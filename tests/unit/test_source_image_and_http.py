"""Image-file source and the HTTP range transport's retry and exact-length rules (local servers)."""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Iterator

import pytest

from pipeline.extents import Extent
from pipeline.source import ChangeIdInvalidError, DiskSource, SourceError
from pipeline.source.http import HttpRangeTransport, folder_url
from pipeline.source.image import ImageSource

MiB = 1 << 20


def test_image_source_reports_allocated_extents_and_no_change_id(tmp_path):
    path = tmp_path / "disk.raw"
    with open(path, "wb") as f:
        f.truncate(8 * MiB)
        f.seek(MiB)
        f.write(b"a" * MiB)
        f.seek(5 * MiB)
        f.write(b"b" * 4096)
    source = ImageSource(path)
    try:
        assert isinstance(source, DiskSource)
        assert source.capacity == 8 * MiB and source.change_id is None
        extents = source.changed_extents(None)
        covered = {off for e in extents for off in range(e.offset, e.end, 4096)}
        assert {MiB, 5 * MiB} <= covered  # data regions are reported (holes may be coarser)
        assert all(Extent(0, 4096) != e for e in extents if e.end <= MiB)
        assert bytes(source.read(5 * MiB, 4)) == b"bbbb"
        with pytest.raises(ChangeIdInvalidError):
            source.changed_extents("anything")
        with pytest.raises(SourceError):
            source.read(8 * MiB - 1, 2)
    finally:
        source.close()


def test_folder_url_quotes_path_and_names_datacenter_and_datastore():
    url = folder_url("https://vc:443/", "DC 1", "ds&1", "my vm/disk-flat.vmdk")
    assert url == "https://vc:443/folder/my%20vm/disk-flat.vmdk?dcPath=DC+1&dsName=ds%261"


class _Flaky(http.server.BaseHTTPRequestHandler):
    data = bytes(range(256)) * 4096  # 1 MiB
    script: list[str] = []
    cookies: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        type(self).cookies.append(self.headers.get("Cookie", ""))
        action = type(self).script.pop(0) if type(self).script else "ok"
        if action == "503":
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if action == "401":
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        first, last = (int(x) for x in self.headers["Range"].removeprefix("bytes=").split("-"))
        body = self.data[first : last + 1]
        if action == "short":
            body = body[:-1]
        self.send_response(206)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Range", f"bytes {first}-{last}/{len(self.data)}")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Flaky.script, _Flaky.cookies = [], []
    yield f"http://127.0.0.1:{server.server_address[1]}/folder/x-flat.vmdk?dcPath=DC0&dsName=ds"
    server.shutdown()
    server.server_close()


def test_http_transport_retries_transient_errors_and_short_bodies(flaky):
    _Flaky.script = ["503", "short", "ok"]
    transport = HttpRangeTransport(flaky, session_cookie=lambda: "abc", retries=3)
    try:
        assert transport.read(1000, 5000) == _Flaky.data[1000:6000]
        assert transport.requests == 3
        assert all(c == 'vmware_soap_session="abc"' for c in _Flaky.cookies)
        assert transport.size() == MiB
    finally:
        transport.close()


def test_http_transport_gives_up_after_its_retries_with_a_clear_error(flaky):
    _Flaky.script = ["503"] * 10
    transport = HttpRangeTransport(flaky, session_cookie=lambda: "abc", retries=2)
    with pytest.raises(SourceError, match=r"failed 3 times \(HTTP 503\)"):
        transport.read(0, 10)


def test_http_transport_refreshes_the_session_once_on_401(flaky):
    cookie = ["old"]
    _Flaky.script = ["401", "ok"]

    def relogin() -> None:
        cookie[0] = "new"

    transport = HttpRangeTransport(flaky, session_cookie=lambda: cookie[0], on_unauthorized=relogin)
    assert transport.read(0, 10) == _Flaky.data[:10]
    assert _Flaky.cookies == ['vmware_soap_session="old"', 'vmware_soap_session="new"']


def test_http_transport_without_a_way_to_log_in_again_fails_on_401(flaky):
    _Flaky.script = ["401"]
    with pytest.raises(SourceError, match="HTTP 401"):
        HttpRangeTransport(flaky, session_cookie=lambda: "x").read(0, 10)


def test_image_source_of_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(SourceError, match="cannot open"):
        ImageSource(tmp_path / "nope.raw")
    assert not os.path.exists(tmp_path / "nope.raw")
