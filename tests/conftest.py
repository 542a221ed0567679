"""A real cellbox server with real runc cells, and the clean-up that goes with it.

Every server a test starts gets its own data directory; when it stops, every
container under that directory is deleted and every cell disk unmounted, even if
the test failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNC = "runc"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``cellbox serve`` in a subprocess."""

    def __init__(self, data_dir: Path, key: str, extra_env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.key = key
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen | None = None
        self.log_path = data_dir.parent / f"server-{self.port}.log"

    def start(self) -> "Server":
        env = dict(os.environ, CELLBOX_API_KEY=self.key, **self.extra_env)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cellbox", "serve", "--data-dir", str(self.data_dir), "--port", str(self.port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log()}")
            try:
                if httpx.get(f"{self.url}/v1/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"server did not start: {self.log()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:] if self.log_path.exists() else ""

    def client(self, key: str | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {key or self.key}"}, timeout=120
        )

    def new_key(self, name: str = "other") -> str:
        out = subprocess.run(
            [sys.executable, "-m", "cellbox", "keys", "create", "--data-dir", str(self.data_dir), "--name", name],
            check=True, capture_output=True, text=True, cwd=ROOT,
        ).stdout
        return out.strip().splitlines()[-1]


def destroy_everything(data_dir: Path) -> None:
    """Delete every container and unmount every disk a server left under data_dir."""
    state_root = data_dir / "runtime" / RUNC
    if state_root.exists():
        out = subprocess.run([RUNC, "--root", str(state_root), "list", "-q"], capture_output=True, text=True).stdout
        for container in out.split():
            subprocess.run([RUNC, "--root", str(state_root), "delete", "--force", container], capture_output=True)
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount_point in reversed(mounts):
        if mount_point.startswith(str(data_dir)):
            subprocess.run(["umount", "-l", mount_point], capture_output=True)
    shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def make_server() -> Iterator:
    """Start servers with their own data directory; all cleaned up after the test."""
    started: list[Server] = []
    top = Path(tempfile.mkdtemp(prefix="cellbox-test-"))
    os.chmod(top, 0o755)

    def make(extra_env: dict[str, str] | None = None, data_dir: Path | None = None) -> Server:
        server = Server(data_dir or top / f"data{len(started)}", "cell_sk_live_" + os.urandom(12).hex(), extra_env)
        started.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in started:
            server.stop()
        for server in started:
            destroy_everything(server.data_dir)
        shutil.rmtree(top, ignore_errors=True)


@contextlib.contextmanager
def serving(prefix: str, extra_env: dict[str, str] | None = None, prepare: Any = None) -> Iterator[Server]:
    """A server in a fresh directory (``prepare(top)`` runs first), removed with all its cells."""
    top = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(top, 0o755)
    env = prepare(top) if prepare is not None else None
    srv = Server(top / "data", "cell_sk_live_" + os.urandom(12).hex(), {**(extra_env or {}), **(env or {})})
    try:
        yield srv.start()
    finally:
        srv.stop()
        destroy_everything(srv.data_dir)
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """One server shared by the tests that do not restart it."""
    with serving("cellbox-session-") as srv:
        yield srv


@pytest.fixture
def api(server: Server) -> Iterator[httpx.Client]:
    with server.client() as client:
        yield client


@pytest.fixture
def cells(api: httpx.Client) -> Iterator:
    """Create cells that are killed after the test: ``cells(**create_body) -> info``."""
    created: list[str] = []

    def create(**body: object) -> dict:
        response = api.post("/v1/cells", json=body)
        assert response.status_code < 400, response.text
        info = response.json()
        created.append(info["cell_id"])
        return info

    yield create
    for cell_id in created:
        api.delete(f"/v1/cells/{cell_id}")


@pytest.fixture
def cell(cells) -> dict:
    return cells()


def sh(api: httpx.Client, cell_id: str, command: str, **extra: object) -> dict:
    response = api.post(f"/v1/cells/{cell_id}/cmd", json={"command": command, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def runc_state(server: Server, cell_id: str) -> str | None:
    out = subprocess.run(
        [RUNC, "--root", str(server.data_dir / "runtime" / RUNC), "state", cell_id], capture_output=True, text=True
    )
    return json.loads(out.stdout)["status"] if out.returncode == 0 else None
