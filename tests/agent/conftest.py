"""Run the agent as a plain host process, for the agent's own logic.

Behaviour that depends on isolation is tested on real cells (tests/cells);
these tests only cover what the agent computes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def agent(tmp_path: Path):
    """An httpx client talking to a fresh agent over its unix socket."""
    sock = tmp_path / "agent.sock"
    workdir = tmp_path / "data"
    workdir.mkdir()
    env = dict(os.environ)
    env.update(
        CELLBOX_AGENT_SOCKET=str(sock),
        CELLBOX_AGENT_WORKDIR=str(workdir),
        HOME=str(tmp_path),
        PYTHONPATH=str(ROOT),
    )
    proc = subprocess.Popen([sys.executable, "-m", "cellbox.agent"], env=env, cwd=tmp_path)
    deadline = time.monotonic() + 10
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("agent did not start")
        time.sleep(0.01)
    client = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://agent", timeout=60)
    client.workdir = workdir  # type: ignore[attr-defined]
    client.socket_path = str(sock)  # type: ignore[attr-defined]
    try:
        yield client
    finally:
        client.close()
        proc.kill()
        proc.wait()
