"""An origin HTTP server on 127.0.0.1, and a cellbox server that may fetch from it."""

from __future__ import annotations

import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator
from urllib.parse import parse_qs, urlparse

import pytest

from tests.conftest import Server
from tests.events.conftest import server_with

BINARY = bytes(range(256)) * 64  # 16 KiB, not UTF-8


class Origin(BaseHTTPRequestHandler):
    """/text, /binary, /bytes?n=, /redirect?to=, /slow?s=, /echo (method, headers, body)."""

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8", **headers: str) -> None:
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/text":
            self._send(200, "héllo from the host\n".encode())
        elif url.path == "/binary":
            self._send(200, BINARY, "application/octet-stream")
        elif url.path == "/bytes":
            n = int(query["n"])
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", str(n))
            self.end_headers()
            block = b"abcdefghij" * 6553 + b"\n"
            sent = 0
            while sent < n:
                chunk = block[: n - sent]
                self.wfile.write(chunk)
                sent += len(chunk)
        elif url.path == "/redirect":
            self._send(302, b"", location=query["to"])
        elif url.path == "/slow":
            time.sleep(float(query.get("s", 3)))
            self._send(200, b"late")
        else:
            self._send(404, b"no such page")

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("content-length", 0))
        body = self.rfile.read(length)
        echo = f"{self.command} {self.headers.get('x-test', '')} {self.headers.get('host')} ".encode() + body
        self._send(201, echo)

    do_PUT = do_POST


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Origin)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


FETCH_MAX_BYTES = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def private_server() -> Iterator[Server]:
    """A server whose operator allowed private destinations (the origin is on loopback)."""
    with server_with({"CELLBOX_FETCH_ALLOW_PRIVATE": "1", "CELLBOX_FETCH_MAX_BYTES": str(FETCH_MAX_BYTES)}) as server:
        yield server


@pytest.fixture(scope="module")
def private_api(private_server: Server):
    with private_server.client() as client:
        yield client


@pytest.fixture(scope="module")
def fetch_cell(private_api) -> Iterator[str]:
    """One cell shared by the fetch tests (each writes its own files)."""
    response = private_api.post("/v1/cells", json={"network": {"deny_out": ["127.0.0.2/32", "*.denied.test"]}})
    assert response.status_code < 400, response.text
    cell_id = response.json()["cell_id"]
    yield cell_id
    private_api.delete(f"/v1/cells/{cell_id}")
