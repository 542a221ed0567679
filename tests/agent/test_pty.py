import json
import os
import re
import socket
import struct
import time

import pytest

DATA, CONTROL = 0, 1


class Terminal:
    """The client side of the agent's framed terminal connection."""

    def __init__(self, socket_path, query="cols=80&rows=24"):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(socket_path)
        self.sock.sendall(
            f"GET /pty?{query} HTTP/1.1\r\nHost: agent\r\n"
            "Connection: Upgrade\r\nUpgrade: cellbox-pty\r\n\r\n".encode()
        )
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._recv()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        self.status_line = head.split(b"\r\n")[0].decode()
        self.output = b""
        self.controls = []

    def _recv(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("the agent closed the terminal")
        return data

    def send(self, kind, payload):
        self.sock.sendall(struct.pack(">BI", kind, len(payload)) + payload)

    def type(self, text):
        self.send(DATA, text.encode())

    def control(self, message):
        self.send(CONTROL, json.dumps(message).encode())

    def read_frame(self):
        while len(self.buffer) < 5 or len(self.buffer) < 5 + struct.unpack(">I", self.buffer[1:5])[0]:
            self.buffer += self._recv()
        kind, length = struct.unpack(">BI", self.buffer[:5])
        payload, self.buffer = self.buffer[5 : 5 + length], self.buffer[5 + length :]
        if kind == DATA:
            self.output += payload
        else:
            self.controls.append(json.loads(payload))
        return kind, payload

    def read_until(self, predicate, timeout=10):
        deadline = time.monotonic() + timeout
        while not predicate(self):
            assert time.monotonic() < deadline, f"gave up; output so far: {self.output!r}"
            self.read_frame()

    def close(self):
        self.sock.close()


@pytest.fixture
def terminal(agent):
    opened = []

    def open_(query="cols=80&rows=24"):
        term = Terminal(agent.socket_path, query)
        opened.append(term)
        return term

    yield open_
    for term in opened:
        term.close()


def _connected(term):
    term.read_until(lambda t: t.controls)
    return term.controls[0]


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False


def test_the_connection_switches_protocols_and_says_connected(terminal):
    term = terminal()
    assert term.status_line.startswith("HTTP/1.1 101")
    connected = _connected(term)
    assert connected["type"] == "connected"
    assert connected["pid"] > 0


def test_a_terminal_request_without_upgrade_is_refused(agent):
    response = agent.get("/pty")
    assert response.status_code == 426


def test_typed_echo_comes_back(terminal):
    term = terminal()
    _connected(term)
    term.type("echo hi-$((40+2))\n")
    term.read_until(lambda t: b"hi-42" in t.output)


def test_the_shell_has_the_terminal_size_and_term(terminal):
    term = terminal("cols=100&rows=30")
    _connected(term)
    term.type("echo size=$(stty size) term=$TERM\n")
    term.read_until(lambda t: b"size=30 100 term=xterm-256color" in t.output)


def test_resize_takes_effect(terminal):
    term = terminal()
    _connected(term)
    term.control({"type": "resize", "cols": 132, "rows": 50})
    term.type("echo size=$(stty size)\n")
    term.read_until(lambda t: b"size=50 132" in t.output)


def test_the_shell_starts_in_the_working_directory(agent, terminal):
    term = terminal()
    _connected(term)
    term.type("echo cwd=$(pwd)\n")
    term.read_until(lambda t: f"cwd={agent.workdir}".encode() in t.output)


def test_exit_reports_the_exit_code(terminal):
    term = terminal()
    _connected(term)
    term.type("exit 7\n")
    term.read_until(lambda t: len(t.controls) > 1)
    assert term.controls[-1] == {"type": "exit", "exit_code": 7}


def test_a_command_runs_instead_of_the_shell(terminal):
    term = terminal("cmd=printf+ran%3B+exit+3")
    _connected(term)
    term.read_until(lambda t: len(t.controls) > 1)
    assert b"ran" in term.output
    assert term.controls[-1] == {"type": "exit", "exit_code": 3}


def test_kill_ends_the_terminal(terminal):
    term = terminal()
    pid = _connected(term)["pid"]
    term.control({"type": "kill"})
    term.read_until(lambda t: len(t.controls) > 1)
    assert term.controls[-1]["type"] == "exit"
    assert term.controls[-1]["exit_code"] == -9
    assert not _alive(pid)


def test_closing_the_connection_kills_the_shell_and_its_jobs(terminal):
    term = terminal()
    shell = _connected(term)["pid"]
    term.type("sleep 100 & echo job=$!\n")
    term.read_until(lambda t: re.search(rb"job=(\d+)\r\n", t.output))
    job = int(re.search(rb"job=(\d+)\r\n", term.output).group(1))
    assert _alive(job)
    term.close()
    deadline = time.monotonic() + 5
    while (_alive(shell) or _alive(job)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(shell)
    assert not _alive(job)


def test_a_closed_terminal_leaves_no_pty_open_in_the_agent(agent, terminal):
    agent_pid = agent.get("/health").json()["pid"]

    def open_ptys():
        found = []
        for fd in os.listdir(f"/proc/{agent_pid}/fd"):
            try:
                if os.readlink(f"/proc/{agent_pid}/fd/{fd}") in ("/dev/ptmx", "/dev/pts/ptmx"):
                    found.append(fd)
            except OSError:
                pass  # closed meanwhile
        return found

    term = terminal()
    _connected(term)
    assert len(open_ptys()) == 1
    term.close()
    deadline = time.monotonic() + 5
    while open_ptys() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert open_ptys() == []
