import json
import os
import re
import socket
import time
from datetime import datetime

import pytest

from cellbox.agent.processes import OutputRing


def _start(agent, command, **fields):
    response = agent.post("/processes", json={"command": command, **fields})
    assert response.status_code == 201, response.text
    return response.json()


def _wait(agent, command_id, predicate=lambda p: p["status"] != "running", timeout=10):
    deadline = time.monotonic() + timeout
    while True:
        process = agent.get(f"/processes/{command_id}").json()
        if predicate(process):
            return process
        assert time.monotonic() < deadline, f"gave up waiting: {process}"
        time.sleep(0.05)


def _group_alive(pgid):
    """Pids of live (not zombie) processes in a process group."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != b"Z":
            alive.append(int(entry))
    return alive


@pytest.fixture
def started(agent):
    """Start processes and kill whatever is left of them after the test."""
    ids = []

    def start(command, **fields):
        process = _start(agent, command, **fields)
        ids.append(process["command_id"])
        return process

    yield start
    for command_id in ids:
        agent.post(f"/processes/{command_id}/kill", json={})


def test_a_started_process_runs_in_the_background(agent, started):
    process = started("sleep 30")
    assert re.fullmatch(r"cmd_[0-9a-f]{12}", process["command_id"])
    assert process["status"] == "running"
    assert process["exit_code"] is None
    assert process["pid"] > 0
    assert process["command"] == "sleep 30"
    assert datetime.fromisoformat(process["started_at"]).utcoffset() is not None
    assert process["ended_at"] is None


def test_a_finished_process_is_completed_with_its_output(agent, started):
    process = started("echo out; echo err >&2")
    done = _wait(agent, process["command_id"])
    assert done["status"] == "completed"
    assert done["exit_code"] == 0
    assert done["stdout"] == "out\n"
    assert done["stderr"] == "err\n"
    assert datetime.fromisoformat(done["ended_at"]) >= datetime.fromisoformat(done["started_at"])


def test_a_non_zero_exit_is_failed(agent, started):
    done = _wait(agent, started("exit 3")["command_id"])
    assert done["status"] == "failed"
    assert done["exit_code"] == 3


def test_a_process_gets_its_cwd_and_envs(agent, started):
    (agent.workdir / "sub").mkdir()
    process = started("pwd; echo $GREETING", cwd="sub", envs={"GREETING": "hi"})
    done = _wait(agent, process["command_id"])
    assert done["stdout"] == f"{agent.workdir / 'sub'}\nhi\n"


def test_the_list_holds_running_and_finished_processes(agent, started):
    running = started("sleep 30")["command_id"]
    finished = started("true")["command_id"]
    _wait(agent, finished)
    listed = {p["command_id"]: p["status"] for p in agent.get("/processes").json()["processes"]}
    assert listed[running] == "running"
    assert listed[finished] == "completed"


def test_an_unknown_process_is_a_404(agent):
    for response in (
        agent.get("/processes/cmd_000000000000"),
        agent.post("/processes/cmd_000000000000/kill", json={}),
        agent.post("/processes/cmd_000000000000/stdin", json={"data": "x"}),
    ):
        assert response.status_code == 404
        assert "cmd_000000000000" in response.json()["error"]


def test_stdin_reaches_the_process(agent, started):
    process = started("cat")
    agent.post(f"/processes/{process['command_id']}/stdin", json={"data": "hello\n"}).raise_for_status()
    echoed = _wait(agent, process["command_id"], lambda p: p["stdout"] == "hello\n")
    assert echoed["status"] == "running"


def test_stdin_eof_lets_the_process_finish(agent, started):
    process = started("wc -c")
    agent.post(f"/processes/{process['command_id']}/stdin", json={"data": "abc", "eof": True}).raise_for_status()
    done = _wait(agent, process["command_id"])
    assert done["stdout"].strip() == "3"
    assert done["status"] == "completed"


def test_stdin_to_a_finished_process_is_a_409(agent, started):
    process = started("true")
    _wait(agent, process["command_id"])
    response = agent.post(f"/processes/{process['command_id']}/stdin", json={"data": "x"})
    assert response.status_code == 409


def test_kill_ends_the_whole_process_tree(agent, started):
    process = started("sleep 100 & sleep 100")
    pgid = process["pid"]
    deadline = time.monotonic() + 5
    while len(_group_alive(pgid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(_group_alive(pgid)) == 3  # bash and both sleeps
    killed = agent.post(f"/processes/{process['command_id']}/kill", json={}).json()
    assert killed["status"] == "failed"
    assert killed["exit_code"] == -9
    deadline = time.monotonic() + 5
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _group_alive(pgid) == []


def test_kill_sends_the_requested_signal(agent, started):
    process = started("sleep 100")
    killed = agent.post(f"/processes/{process['command_id']}/kill", json={"signal": "SIGTERM"}).json()
    assert killed["exit_code"] == -15


def test_an_unknown_signal_is_a_400(agent, started):
    process = started("sleep 100")
    assert agent.post(f"/processes/{process['command_id']}/kill", json={"signal": "SIGNOPE"}).status_code == 400


def test_a_process_past_its_timeout_is_killed(agent, started):
    process = started("sleep 100", timeout=0.3)
    done = _wait(agent, process["command_id"])
    assert done["timed_out"] is True
    assert done["exit_code"] == 124
    assert done["status"] == "failed"


def _stream(agent, command_id, **offsets):
    events = []
    with agent.stream("GET", f"/processes/{command_id}/stream", params=offsets) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            events.append(json.loads(line))
    return events


def test_stream_follows_output_live_until_the_exit(agent, started):
    process = started("printf abc; sleep 0.3; printf def >&2; sleep 0.3; printf ghi; exit 4")
    events = _stream(agent, process["command_id"])
    assert "".join(e["text"] for e in events if e["type"] == "stdout") == "abcghi"
    assert "".join(e["text"] for e in events if e["type"] == "stderr") == "def"
    assert events[-1] == {"type": "exit", "exit_code": 4, "status": "failed"}
    assert len([e for e in events if e["type"] == "stdout"]) >= 2  # arrived as it was written


def test_stream_starts_from_the_given_offsets(agent, started):
    process = started("printf abcdef; printf 123456 >&2; sleep 0.2; printf ghi")
    events = _stream(agent, process["command_id"], offset_stdout=3, offset_stderr=4)
    stdout = [e for e in events if e["type"] == "stdout"]
    assert stdout[0]["offset"] == 3
    assert "".join(e["text"] for e in stdout) == "defghi"
    assert stdout[-1]["next_offset"] == 9
    assert "".join(e["text"] for e in events if e["type"] == "stderr") == "56"


def test_stream_of_a_finished_process_replays_then_exits(agent, started):
    process = started("echo done")
    _wait(agent, process["command_id"])
    events = _stream(agent, process["command_id"])
    assert events == [
        {"type": "stdout", "text": "done\n", "offset": 0, "next_offset": 5},
        {"type": "exit", "exit_code": 0, "status": "completed"},
    ]


def test_stream_does_not_split_a_character_across_events(agent, started):
    process = started("printf '\\xc3'; sleep 0.3; printf '\\xa9!'")
    events = _stream(agent, process["command_id"])
    assert [e["text"] for e in events if e["type"] == "stdout"] == ["é!"]


def test_output_of_a_chatty_process_keeps_the_most_recent_mebibyte(agent, started):
    total = 3_000_000
    process = started(f"head -c {total - 3} /dev/zero | tr '\\0' a; printf END")
    done = _wait(agent, process["command_id"])
    trimmed = total - 1024 * 1024
    marker = f"[cellbox: {trimmed} earlier bytes of output were trimmed]\n"
    assert done["stdout"].startswith(marker)
    assert done["stdout"].endswith("aaaEND")
    assert len(done["stdout"]) == len(marker) + 1024 * 1024
    assert done["stdout_offset"] == total


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_background_server_answers_a_foreground_command(agent, started):
    (agent.workdir / "page.txt").write_text("served from the cell\n")
    port = _free_port()
    server = started(f"python3 -m http.server {port} --bind 127.0.0.1")
    fetch = (
        "import urllib.request, time\n"
        "for _ in range(100):\n"
        "    try:\n"
        f"        print(urllib.request.urlopen('http://127.0.0.1:{port}/page.txt').read().decode(), end='')\n"
        "        break\n"
        "    except OSError:\n"
        "        time.sleep(0.05)\n"
    )
    result = agent.post("/commands/run", json={"command": f"python3 -c \"{fetch}\"", "timeout": 20}).json()
    assert result["stdout"] == "served from the cell\n"
    assert agent.get(f"/processes/{server['command_id']}").json()["status"] == "running"


def test_stream_from_a_trimmed_offset_starts_with_a_marker(agent, started):
    process = started("head -c 1500000 /dev/zero | tr '\\0' a")
    _wait(agent, process["command_id"])
    first = _stream(agent, process["command_id"])[0]
    trimmed = 1_500_000 - 1024 * 1024
    assert first["text"].startswith(f"[cellbox: {trimmed} earlier bytes of output were trimmed]\n")
    assert first["offset"] == trimmed


def test_the_output_ring_addresses_bytes_by_stream_offset():
    ring = OutputRing(cap=4)
    for chunk in (b"ab", b"cd", b"ef", b"gh", b"ij"):
        ring.add(chunk)
    assert (ring.start, ring.end) == (6, 10)
    assert ring.read(0) == (6, b"ghij")
    assert ring.read(8) == (8, b"ij")
    assert ring.read(10) == (10, b"")
    assert ring.text() == "[cellbox: 6 earlier bytes of output were trimmed]\nghij"


def test_kill_after_the_shell_exited_ends_what_it_left_running(agent, started):
    process = started("sleep 100 & echo $!")
    done = _wait(agent, process["command_id"])
    assert done["status"] == "completed"
    leftover = int(done["stdout"])
    assert _group_alive(process["pid"]) == [leftover]
    agent.post(f"/processes/{process['command_id']}/kill", json={}).raise_for_status()
    deadline = time.monotonic() + 5
    while _group_alive(process["pid"]) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _group_alive(process["pid"]) == []
