"""Cells outlive the server: a restarted server adopts them."""

from __future__ import annotations

import signal
import subprocess

from tests.conftest import RUNC, runc_state, sh


def test_restarted_server_adopts_running_cells(make_server):
    server = make_server()
    with server.client() as api:
        cell_id = api.post("/v1/cells", json={"metadata": {"k": "v"}}).json()["cell_id"]
        sh(api, cell_id, "echo kept > /data/file; sleep 600 >/dev/null 2>&1 &")
    server.stop(signal.SIGKILL)
    assert runc_state(server, cell_id) == "running", "a crashed server must leave its cells running"
    server.start()
    with server.client() as api:
        info = api.get(f"/v1/cells/{cell_id}").json()
        assert info["state"] == "running" and info["metadata"] == {"k": "v"}
        assert sh(api, cell_id, "cat /data/file; pgrep -c sleep")["stdout"] == "kept\n1\n"
        assert api.delete(f"/v1/cells/{cell_id}").status_code == 200


def test_graceful_stop_leaves_cells_running(make_server):
    server = make_server()
    with server.client() as api:
        cell_id = api.post("/v1/cells", json={}).json()["cell_id"]
    server.stop(signal.SIGTERM)
    assert runc_state(server, cell_id) == "running"
    server.start()
    with server.client() as api:
        assert sh(api, cell_id, "echo back")["stdout"] == "back\n"


def test_a_cell_whose_container_vanished_is_marked_killed_with_a_reason(make_server):
    server = make_server()
    with server.client() as api:
        cell_id = api.post("/v1/cells", json={}).json()["cell_id"]
    server.stop(signal.SIGKILL)
    subprocess.run([RUNC, "--root", str(server.data_dir / "runtime" / RUNC), "delete", "--force", cell_id], check=True)
    server.start()
    with server.client() as api:
        info = api.get(f"/v1/cells/{cell_id}").json()
        assert info["state"] == "killed"
        assert "container was gone" in info["end_reason"]


def test_a_cell_whose_container_dies_is_ended_with_a_reason(server, api, cells):
    import os
    import time

    cell_id = cells()["cell_id"]
    pid = int((server.data_dir / "cells" / cell_id / "pid").read_text())
    os.kill(pid, 9)  # from the host: the whole container goes
    deadline = time.monotonic() + 15
    while api.get(f"/v1/cells/{cell_id}").json()["state"] == "running":
        assert time.monotonic() < deadline, "the dead cell was not noticed"
        time.sleep(0.3)
    info = api.get(f"/v1/cells/{cell_id}").json()
    assert info["state"] == "killed" and "stopped unexpectedly" in info["end_reason"]


def test_a_dead_cell_with_a_snapshot_waits_paused_to_be_restored(server, api, cells):
    import os
    import time

    cell_id = cells()["cell_id"]
    sh(api, cell_id, "echo kept > f.txt")
    api.post(f"/v1/cells/{cell_id}/snapshots")
    os.kill(int((server.data_dir / "cells" / cell_id / "pid").read_text()), 9)
    deadline = time.monotonic() + 15
    while api.get(f"/v1/cells/{cell_id}").json()["state"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert api.get(f"/v1/cells/{cell_id}").json()["state"] == "paused"
    assert api.post(f"/v1/cells/{cell_id}/resume").json()["restored"]["files"] is True
    assert sh(api, cell_id, "cat f.txt")["stdout"] == "kept\n"
