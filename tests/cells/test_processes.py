"""Background processes and the terminal in real cells."""

from __future__ import annotations

import json
import time

import websocket
from synapse.cell import Cell

from tests.conftest import sh


def wait_for(api, cell_id, command_id, predicate, seconds=10):
    deadline = time.monotonic() + seconds
    while True:
        body = api.get(f"/v1/cells/{cell_id}/processes/{command_id}").json()
        if predicate(body):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.1)


def test_background_command_answers_at_once_and_runs_on(api, cell):
    cell_id = cell["cell_id"]
    started = time.monotonic()
    body = api.post(f"/v1/cells/{cell_id}/cmd", json={"command": "sleep 1; echo done", "background": True}).json()
    assert time.monotonic() - started < 1 and body["command_id"].startswith("cmd_")
    assert body["status"] == "running" and body["exit_code"] is None
    done = wait_for(api, cell_id, body["command_id"], lambda p: p["status"] != "running")
    assert (done["status"], done["exit_code"], done["stdout"]) == ("completed", 0, "done\n")
    assert done["started_at"] and done["ended_at"]
    listed = api.get(f"/v1/cells/{cell_id}/processes").json()
    assert body["command_id"] in [p["command_id"] for p in listed]
    old = api.get(f"/v1/cells/{cell_id}/commands/{body['command_id']}").json()
    assert old["command_id"] == body["command_id"] and old["status"] == "completed"


def test_stdin_reaches_the_process_and_eof_ends_it(api, cell):
    cell_id = cell["cell_id"]
    command_id = api.post(f"/v1/cells/{cell_id}/cmd", json={"command": "cat", "background": True}).json()["command_id"]
    api.post(f"/v1/cells/{cell_id}/processes/{command_id}/stdin", json={"data": "echo me\n"})
    wait_for(api, cell_id, command_id, lambda p: p["stdout"] == "echo me\n")
    api.post(f"/v1/cells/{cell_id}/processes/{command_id}/stdin", json={"data": "", "eof": True})
    done = wait_for(api, cell_id, command_id, lambda p: p["status"] != "running")
    assert done["exit_code"] == 0
    late = api.post(f"/v1/cells/{cell_id}/processes/{command_id}/stdin", json={"data": "x"})
    assert late.status_code == 409


def test_kill_ends_the_whole_process_tree(api, cell):
    cell_id = cell["cell_id"]
    command_id = api.post(
        f"/v1/cells/{cell_id}/cmd", json={"command": "sleep 300 & sleep 301; wait", "background": True}
    ).json()["command_id"]
    wait_for(api, cell_id, command_id, lambda p: True)
    assert sh(api, cell_id, "pgrep -c -x sleep")["stdout"].strip() == "2"
    killed = api.post(f"/v1/cells/{cell_id}/processes/{command_id}/kill", json={}).json()
    assert killed["status"] == "failed"
    assert sh(api, cell_id, "pgrep -c -x sleep || true")["stdout"].strip() == "0"
    other = api.post(f"/v1/cells/{cell_id}/cmd", json={"command": "sleep 300", "background": True}).json()
    assert api.delete(f"/v1/cells/{cell_id}/commands/{other['command_id']}").status_code == 200
    wait_for(api, cell_id, other["command_id"], lambda p: p["status"] == "failed")


def test_a_server_in_the_cell_answers_from_inside(api, cell):
    cell_id = cell["cell_id"]
    api.post(f"/v1/cells/{cell_id}/cmd", json={"command": "echo served > index.html; python3 -m http.server 8080 --bind 127.0.0.1", "background": True})
    fetch = "python3 -c \"import urllib.request,time\nfor _ in range(50):\n  try: print(urllib.request.urlopen('http://127.0.0.1:8080/index.html').read().decode()); break\n  except OSError: time.sleep(0.1)\""
    assert sh(api, cell_id, fetch)["stdout"].strip() == "served"


def test_stream_follows_output_live_from_an_offset(server, api, cell):
    cell_id = cell["cell_id"]
    command_id = api.post(
        f"/v1/cells/{cell_id}/cmd",
        json={"command": "echo one; sleep 1; echo two", "background": True},
    ).json()["command_id"]
    events = []
    with server.client() as client:
        with client.stream("GET", f"/v1/cells/{cell_id}/processes/{command_id}/stream") as response:
            for line in response.iter_lines():
                if line.startswith("data: "):
                    events.append((time.monotonic(), json.loads(line[6:])))
    texts = "".join(e["text"] for _, e in events if e["type"] == "stdout")
    assert texts == "one\ntwo\n"
    assert events[-1][1]["type"] == "exit" and events[-1][1]["exit_code"] == 0
    assert events[-1][0] - events[0][0] > 0.5, "output must arrive as it is produced"
    with server.client() as client:
        with client.stream("GET", f"/v1/cells/{cell_id}/processes/{command_id}/stream", params={"offset_stdout": 4}) as response:
            rest = [json.loads(l[6:]) for l in response.iter_lines() if l.startswith("data: ")]
    assert "".join(e.get("text", "") for e in rest if e["type"] == "stdout") == "two\n"


def test_a_chatty_process_keeps_a_bounded_output_with_a_marker(api, cell):
    cell_id = cell["cell_id"]
    command_id = api.post(
        f"/v1/cells/{cell_id}/cmd", json={"command": "head -c 5000000 /dev/zero | tr '\\0' a", "background": True},
    ).json()["command_id"]
    done = wait_for(api, cell_id, command_id, lambda p: p["status"] != "running", 30)
    assert len(done["stdout"]) < 1.1 * 1024 * 1024
    assert "trimmed" in done["stdout"]


def test_unknown_process_is_404(api, cell):
    assert api.get(f"/v1/cells/{cell['cell_id']}/processes/cmd_nope").status_code == 404


def test_processes_end_with_their_cell(server, api, cells):
    cell_id = cells()["cell_id"]
    api.post(f"/v1/cells/{cell_id}/cmd", json={"command": "sleep 1000", "background": True})
    api.delete(f"/v1/cells/{cell_id}")
    import subprocess

    assert subprocess.run(["pgrep", "-f", "sleep 1000"], capture_output=True).returncode == 1


def test_terminal_through_the_published_client(server):
    cell = Cell(api_url=server.url, api_key=server.key)
    output = []
    try:
        terminal = cell.pty.create(on_data=output.append)
        assert terminal.pid
        terminal.send_stdin(b"echo $((6*7))\n")
        deadline = time.monotonic() + 10
        while b"42" not in b"".join(output) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b"42" in b"".join(output)
        terminal.resize(100, 30)
        terminal.send_stdin(b"stty size\n")
        while b"30 100" not in b"".join(output) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert b"30 100" in b"".join(output)
        terminal.kill()
    finally:
        cell.kill()


def test_terminal_refuses_a_missing_key(server, cell):
    ws = websocket.WebSocket()
    try:
        ws.connect(f"ws://127.0.0.1:{server.port}/v1/cells/{cell['cell_id']}/pty")
        opcode, _ = ws.recv_data()
        assert opcode == websocket.ABNF.OPCODE_CLOSE
    except websocket.WebSocketException:
        pass  # refused during the handshake: also fine
    finally:
        ws.close()


def test_git_works_in_a_cell(api, cell):
    body = sh(api, cell["cell_id"], (
        "git init -q repo && cd repo && git config user.email a@b.c && git config user.name cell"
        " && echo hi > f && git add f && git commit -qm first && git log --oneline | wc -l"
    ))
    assert body["exit_code"] == 0 and body["stdout"].strip() == "1", body
