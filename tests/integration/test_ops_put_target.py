"""Restore to a datastore-like HTTP endpoint: one PUT of the whole disk, with the session cookie."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.ops.errors import RestoreError, RestoreTargetError
from pipeline.ops.restore import RestoreTuning, restore_disk
from pipeline.ops.targets import HttpPutTarget
from tests.unit.ops_repo import BLOCK, disk_bytes, make_repo

pytestmark = pytest.mark.integration
COOKIE = 'vmware_soap_session="52a0c0de"'
CAPACITY = 12 * BLOCK + 512
BLOCKS = {i * BLOCK: bytes([i + 1]) * BLOCK for i in (0, 1, 4, 7, 8)} | {12 * BLOCK: b"z" * 512}


class Folder(BaseHTTPRequestHandler):
    """Like vCenter's /folder: PUT needs the session cookie; only a whole body becomes a file."""

    files: dict[str, bytes] = {}

    def do_PUT(self) -> None:  # noqa: N802
        if self.headers.get("Cookie") != COOKIE:
            self.send_response(401)
            self.end_headers()
            return
        length = int(self.headers["Content-Length"])
        body = bytearray()
        while len(body) < length:
            piece = self.rfile.read(min(1 << 20, length - len(body)))
            if not piece:
                return  # the client hung up: no file
            body += piece
        self.files[self.path] = bytes(body)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def folder() -> Iterator[str]:
    Folder.files = {}
    server = ThreadingHTTPServer(("127.0.0.1", 0), Folder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_disk_is_put_whole_with_the_session_cookie(folder, tmp_path):
    location, point = make_repo(tmp_path, BLOCKS, CAPACITY)
    url = f"{folder}/folder/vm-x/disk0-flat.vmdk?dcPath=DC0&dsName=LocalDS_0"
    target = HttpPutTarget(url, {"Cookie": COOKIE})
    result = restore_disk(location, point, point.disks[0], target, RestoreTuning(window_bytes=2 * BLOCK))
    assert Folder.files["/folder/vm-x/disk0-flat.vmdk?dcPath=DC0&dsName=LocalDS_0"] == disk_bytes(
        BLOCKS, CAPACITY
    )
    assert result.target == f"{folder}/folder/vm-x/disk0-flat.vmdk"  # no query string in reports


def test_a_refused_put_names_the_status(folder, tmp_path):
    location, point = make_repo(tmp_path, BLOCKS, CAPACITY)
    target = HttpPutTarget(f"{folder}/folder/x-flat.vmdk", {"Cookie": "wrong"})
    with pytest.raises(RestoreTargetError, match="401"):
        restore_disk(location, point, point.disks[0], target)


def test_a_damaged_chunk_cuts_the_put_short_so_no_file_appears(folder, tmp_path):
    location, point = make_repo(tmp_path, BLOCKS, CAPACITY)
    repo = location.open()
    entry = repo.lookup(repo.chunk_id(BLOCKS[7 * BLOCK]))
    pack = tmp_path / "repo" / "packs" / entry.pack_id[:2] / entry.pack_id
    data = bytearray(pack.read_bytes())
    data[entry.offset] ^= 1
    pack.write_bytes(bytes(data))
    with pytest.raises(RestoreError, match=entry.chunk_id.hex()):
        restore_disk(
            location, point, point.disks[0], HttpPutTarget(f"{folder}/folder/y-flat.vmdk", {"Cookie": COOKIE})
        )
    assert Folder.files == {}


def test_an_unreachable_endpoint_is_a_clear_error(tmp_path):
    location, point = make_repo(tmp_path, BLOCKS, CAPACITY)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RestoreTargetError, match="PUT to http://127.0.0.1"):
        restore_disk(location, point, point.disks[0], HttpPutTarget(f"http://127.0.0.1:{port}/folder/z"))
