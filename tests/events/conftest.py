"""A webhook receiver on 127.0.0.1, and a server allowed to deliver to it with a fast retry schedule."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator

import pytest

from tests.conftest import Server, serving

# Short enough for tests to see retries in seconds.
WEBHOOK_ENV = {
    "CELLBOX_WEBHOOK_ALLOW_PRIVATE": "1",
    "CELLBOX_WEBHOOK_RETRY_BASE_S": "0.2",
    "CELLBOX_WEBHOOK_MAX_ATTEMPTS": "4",
    "CELLBOX_WEBHOOK_TIMEOUT_S": "2",
    "CELLBOX_EVENTS_HEARTBEAT_S": "0.5",
}


class Receiver:
    """Records every request; answers per path from a plan of statuses (then 200)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.plans: dict[str, list[int]] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.lock:
                    receiver.requests.append(
                        {"path": self.path, "headers": dict(self.headers.items()), "body": body, "at": time.time()}
                    )
                    plan = receiver.plans.get(self.path, [])
                    status = plan.pop(0) if plan else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def at(self, path: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path]

    def wait_for(self, path: str, check: Callable[[list[dict]], bool], timeout: float = 15) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.at(path)
            if check(got):
                return got
            time.sleep(0.05)
        raise AssertionError(f"receiver did not get what was expected at {path}: {self.at(path)}")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def server_with(env: dict[str, str]):
    """A server with these settings for a whole module (``make_server`` is per test)."""
    return serving("cellbox-module-", env)


@pytest.fixture(scope="module")
def hook_server() -> Iterator[Server]:
    with server_with(WEBHOOK_ENV) as server:
        yield server


@pytest.fixture
def hook_api(hook_server: Server):
    with hook_server.client() as client:
        yield client


@pytest.fixture
def hook_cells(hook_api) -> Iterator:
    created: list[str] = []

    def create(**body: object) -> dict:
        response = hook_api.post("/v1/cells", json=body)
        assert response.status_code < 400, response.text
        created.append(response.json()["cell_id"])
        return response.json()

    yield create
    for cell_id in created:
        hook_api.delete(f"/v1/cells/{cell_id}")
