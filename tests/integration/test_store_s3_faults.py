"""The S3 backend against a real moto server behind a loopback proxy that breaks a connection."""

import os
import socket
import threading

import pytest

from pipeline.store.s3 import S3Store

pytestmark = pytest.mark.integration


class CuttingProxy:
    """Forwards TCP to moto; once, cuts a connection after ``cut_after`` bytes of response."""

    def __init__(self, upstream: tuple[str, int], cut_after: int) -> None:
        self.upstream, self.cut_after, self.cuts = upstream, cut_after, 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, is_response: bool) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                if is_response and self.cuts == 0 and sent + len(data) > self.cut_after:
                    self.cuts += 1
                    dst.sendall(data[: self.cut_after - sent])
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        for s in (src, dst):  # shutdown, not just close: wakes the other pump blocked in recv
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self._listener.close()


def test_a_body_cut_mid_stream_is_read_again_and_arrives_whole(s3_endpoint, s3_bucket):
    host, port = s3_endpoint.removeprefix("http://").split(":")
    proxy = CuttingProxy((host, int(port)), cut_after=1 << 20)
    try:
        store = S3Store(s3_bucket, "repo", endpoint_url=f"http://127.0.0.1:{proxy.port}")
        body = os.urandom(3 << 20)
        store.put("packs/cc/cut", body)
        assert store.get("packs/cc/cut") == body
        assert proxy.cuts == 1
    finally:
        proxy.close()
