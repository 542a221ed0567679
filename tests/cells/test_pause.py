"""Pause, resume and snapshots on real cells: nothing lost, never half paused."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from synapse.cell import Cell

from tests.conftest import runc_state, sh


# Waits for the cell's own web server to be up, then fetches its page.
FETCH_PAGE = (
    "python3 -c \"import urllib.request, time\n"
    "for _ in range(100):\n"
    "    try:\n"
    "        print(urllib.request.urlopen('http://127.0.0.1:8080/page.html').read().decode().strip()); break\n"
    "    except OSError: time.sleep(0.05)\""
)


def run(api, cell_id, code):
    body = api.post(f"/v1/cells/{cell_id}/exec", json={"code": code}).json()
    assert "exit_code" in body, body
    return body


def cpu_usage_ns(server, cell_id) -> int:
    for path in (f"/sys/fs/cgroup/cpuacct/cellbox/{cell_id}/cpuacct.usage", f"/sys/fs/cgroup/cellbox/{cell_id}/cpu.stat"):
        if Path(path).exists():
            text = Path(path).read_text()
            if path.endswith("cpu.stat"):
                return int(dict(line.split() for line in text.splitlines())["usage_usec"]) * 1000
            return int(text)
    raise AssertionError("no cpu accounting file for the cell")


def test_pause_freezes_the_cell_and_resume_keeps_variables_and_servers(server, api, cells):
    cell_id = cells()["cell_id"]
    run(api, cell_id, "kept = {'answer': 42}")
    api.post(f"/v1/cells/{cell_id}/cmd", json={"command": "echo served > page.html; python3 -m http.server 8080 --bind 127.0.0.1", "background": True})
    api.post(f"/v1/cells/{cell_id}/cmd", json={"command": "while :; do :; done", "background": True})
    assert sh(api, cell_id, FETCH_PAGE)["stdout"] == "served\n"  # the server is up before the pause
    body = api.post(f"/v1/cells/{cell_id}/pause").json()
    assert body["snapshot_id"].startswith("snap_")
    assert api.get(f"/v1/cells/{cell_id}").json()["state"] == "paused"
    assert runc_state(server, cell_id) == "paused"
    before = cpu_usage_ns(server, cell_id)
    time.sleep(1)
    assert cpu_usage_ns(server, cell_id) - before < 10_000_000, "a paused cell must not use CPU"
    resumed = api.post(f"/v1/cells/{cell_id}/resume").json()
    assert resumed["restored"]["from"] == "memory" and resumed["cell"]["state"] == "running"
    assert run(api, cell_id, "print(kept['answer'])")["stdout"] == "42\n"
    assert sh(api, cell_id, "python3 -c \"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8080/page.html', timeout=5).read().decode().strip())\"")["stdout"] == "served\n"


def test_work_on_a_paused_cell_is_refused_with_a_hint_to_resume(api, cells):
    cell_id = cells()["cell_id"]
    api.post(f"/v1/cells/{cell_id}/pause")
    for method, path, body in [
        ("POST", "exec", {"code": "1"}), ("POST", "cmd", {"command": "true"}), ("GET", "files?path=x", None),
    ]:
        response = api.request(method, f"/v1/cells/{cell_id}/{path}", json=body)
        assert response.status_code == 409 and "resume" in response.json()["error"]
    assert api.post(f"/v1/cells/{cell_id}/pause").status_code == 409


def test_auto_resume_resumes_on_the_next_call(api, cells):
    cell_id = cells(lifecycle={"on_timeout": "kill", "auto_resume": True})["cell_id"]
    run(api, cell_id, "z = 7")
    api.post(f"/v1/cells/{cell_id}/pause")
    assert run(api, cell_id, "print(z)")["stdout"] == "7\n"
    assert api.get(f"/v1/cells/{cell_id}").json()["state"] == "running"


def test_timeout_with_on_timeout_pause_pauses_instead_of_killing(server, api, cells):
    cell_id = cells(lifecycle={"on_timeout": "pause"})["cell_id"]
    api.put(f"/v1/cells/{cell_id}/timeout", json={"timeout": 1})
    deadline = time.monotonic() + 10
    # Watch from the host: reading the cell through the API would be activity.
    while runc_state(server, cell_id) != "paused":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(0.3)
    assert api.get(f"/v1/cells/{cell_id}").json()["state"] == "paused"
    assert api.post(f"/v1/cells/{cell_id}/resume").status_code == 200


def test_snapshots_are_listed_taken_and_deleted(api, cells):
    cell_id = cells()["cell_id"]
    sh(api, cell_id, "echo one > a.txt")
    manual = api.post(f"/v1/cells/{cell_id}/snapshots").json()
    assert manual["reason"] == "manual" and len(manual["digest"]) == 64 and manual["size_bytes"] > 0
    assert api.get(f"/v1/cells/{cell_id}").json()["state"] == "running"
    paused = api.post(f"/v1/cells/{cell_id}/pause").json()["snapshot"]
    listed = api.get(f"/v1/cells/{cell_id}/snapshots").json()
    assert [s["snapshot_id"] for s in listed] == [manual["snapshot_id"], paused["snapshot_id"]]
    assert api.delete(f"/v1/cells/{cell_id}/snapshots/{manual['snapshot_id']}").status_code == 204
    assert [s["snapshot_id"] for s in api.get(f"/v1/cells/{cell_id}/snapshots").json()] == [paused["snapshot_id"]]
    assert api.delete(f"/v1/cells/{cell_id}/snapshots/snap_nope").status_code == 404


def test_published_client_pause_connect_resumes(server):
    cell = Cell(api_url=server.url, api_key=server.key)
    try:
        cell.run("word = 'kept'")
        snapshot_id = cell.pause()
        assert snapshot_id
        again = Cell.connect(cell.cell_id, api_url=server.url, api_key=server.key)
        assert again.run("print(word)").stdout == "kept\n"
    finally:
        cell.kill()


def test_a_long_paused_cell_is_evicted_and_restored_with_files_and_variables(make_server):
    server = make_server(extra_env={"CELLBOX_EVICT_AFTER_S": "1"})
    with server.client() as api:
        cell_id = api.post("/v1/cells", json={}).json()["cell_id"]
        sh(api, cell_id, "mkdir -p work && echo precious > work/file.txt")
        run(api, cell_id, "import json\nnumbers = [1, 2, 3]\ndef double(x):\n    return 2 * x\nhandle = open('/data/work/file.txt')")
        api.post(f"/v1/cells/{cell_id}/pause")
        deadline = time.monotonic() + 20
        while runc_state(server, cell_id) is not None:
            assert time.monotonic() < deadline, "the paused cell was not evicted"
            time.sleep(0.2)
        kinds = [e["type"] for e in api.get(f"/v1/cells/{cell_id}/events").json()] if api.get(f"/v1/cells/{cell_id}/events").status_code == 200 else []
        resumed = api.post(f"/v1/cells/{cell_id}/resume").json()
        restored = resumed["restored"]
        assert restored["files"] is True and restored["processes"] is False
        assert set(restored["variables"]["restored"]) >= {"numbers", "double"}
        assert "json" in restored["variables"]["modules"]
        assert sh(api, cell_id, "cat work/file.txt")["stdout"] == "precious\n"
        assert run(api, cell_id, "print(double(numbers[-1]), json.dumps(numbers))")["stdout"] == "6 [1, 2, 3]\n"
        if kinds:
            assert "cell.evicted" in kinds


def test_a_corrupt_archive_is_refused_and_the_cell_stays_paused(make_server):
    server = make_server(extra_env={"CELLBOX_EVICT_AFTER_S": "1"})
    with server.client() as api:
        cell_id = api.post("/v1/cells", json={}).json()["cell_id"]
        sh(api, cell_id, "echo data > f")
        api.post(f"/v1/cells/{cell_id}/pause")
        deadline = time.monotonic() + 20
        while runc_state(server, cell_id) is not None:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        for archive in (server.data_dir / "snapshots" / cell_id).glob("*.tar"):
            with open(archive, "r+b") as f:
                f.seek(600)
                f.write(b"corrupted!")
        response = api.post(f"/v1/cells/{cell_id}/resume")
        assert response.status_code == 500 and "corrupt" in response.json()["error"]
        assert api.get(f"/v1/cells/{cell_id}").json()["state"] == "paused"


def test_server_killed_with_running_and_paused_cells_finds_them_as_they_were(make_server):
    server = make_server()
    with server.client() as api:
        running = api.post("/v1/cells", json={}).json()["cell_id"]
        paused = api.post("/v1/cells", json={}).json()["cell_id"]
        run(api, running, "r = 'running'")
        run(api, paused, "p = 'paused'")
        api.post(f"/v1/cells/{paused}/pause")
    server.stop(signal.SIGKILL)
    server.start()
    with server.client() as api:
        assert api.get(f"/v1/cells/{running}").json()["state"] == "running"
        assert api.get(f"/v1/cells/{paused}").json()["state"] == "paused"
        assert run(api, running, "print(r)")["stdout"] == "running\n"
        assert api.post(f"/v1/cells/{paused}/resume").json()["restored"]["from"] == "memory"
        assert run(api, paused, "print(p)")["stdout"] == "paused\n"


def test_a_cell_whose_container_vanished_comes_back_from_its_snapshot(make_server):
    server = make_server()
    with server.client() as api:
        cell_id = api.post("/v1/cells", json={}).json()["cell_id"]
        sh(api, cell_id, "echo survived > keep.txt")
        api.post(f"/v1/cells/{cell_id}/snapshots")
    server.stop(signal.SIGKILL)
    import subprocess

    subprocess.run(["runc", "--root", str(server.data_dir / "runtime" / "runc"), "delete", "--force", cell_id], check=True)
    server.start()
    with server.client() as api:
        assert api.get(f"/v1/cells/{cell_id}").json()["state"] == "paused"
        restored = api.post(f"/v1/cells/{cell_id}/resume").json()["restored"]
        assert restored["files"] and not restored["processes"]
        assert sh(api, cell_id, "cat keep.txt")["stdout"] == "survived\n"


def test_a_new_cell_can_start_from_a_snapshot_of_the_same_tenant(server, api, cells):
    source = cells()["cell_id"]
    sh(api, source, "mkdir -p proj && echo forked > proj/state.txt")
    snapshot_id = api.post(f"/v1/cells/{source}/snapshots").json()["snapshot_id"]
    fork = cells(snapshot_id=snapshot_id)
    assert fork["cell_id"] != source
    assert sh(api, fork["cell_id"], "cat proj/state.txt")["stdout"] == "forked\n"
    # The fork has its own host ids; its files were moved into them.
    assert sh(api, fork["cell_id"], "stat -c %U proj/state.txt")["stdout"] == "user\n"
    sh(api, fork["cell_id"], "echo changed > proj/state.txt")
    assert sh(api, source, "cat proj/state.txt")["stdout"] == "forked\n", "a fork does not touch its source"
    with server.client(server.new_key("stranger")) as stranger:
        response = stranger.post("/v1/cells", json={"snapshot_id": snapshot_id})
        assert response.status_code == 404
