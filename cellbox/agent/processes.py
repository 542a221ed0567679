"""Background processes: start, watch their output, feed stdin, signal, forget.

Each process gets one pump thread that reads its stdout and stderr into rings
(the most recent output, addressed by byte offsets from the start of the
stream), so an HTTP thread never blocks on a pipe and a chatty process cannot
grow the agent. Streams wait on the process's condition for new bytes.
"""

from __future__ import annotations

import os
import secrets
import select
import selectors
import signal
import subprocess
import threading
import time
from typing import Iterator

from . import children
from .commands import parse_command, parse_timeout
from .environment import command_env, iso_time, resolve_cwd
from .http import HTTPError, Request, Response, Router, json_response, ndjson_line

router = Router()

OUTPUT_CAP = 1024 * 1024  # per stream, per process
MAX_FINISHED = 200
# Finished processes are forgotten oldest first past either bound.
FINISHED_OUTPUT_BUDGET = 64 * 1024 * 1024
# Once the process exits, how long to keep reading output still in the pipes
# before calling it finished (a background grandchild may hold them open).
_DRAIN_GRACE_S = 0.2
_STDIN_WRITE_TIMEOUT_S = 10.0
_KILL_WAIT_S = 2.0


class OutputRing:
    """The last ``cap`` bytes of a stream; ``end`` counts every byte ever written."""

    def __init__(self, cap: int = OUTPUT_CAP) -> None:
        self.cap = cap
        self.end = 0
        self._buffer = bytearray()

    def add(self, chunk: bytes) -> None:
        self._buffer += chunk
        self.end += len(chunk)
        # Trim in batches: deleting from the front on every chunk would copy the
        # whole ring each time.
        if len(self._buffer) > 2 * self.cap:
            self.compact()

    def compact(self) -> None:
        del self._buffer[: max(0, len(self._buffer) - self.cap)]

    @property
    def start(self) -> int:
        """Offset of the oldest byte still kept."""
        return self.end - min(len(self._buffer), self.cap)

    def read(self, offset: int) -> tuple[int, bytes]:
        """The kept bytes from ``offset`` on (from ``start`` if those are gone)."""
        offset = min(max(offset, self.start), self.end)
        return offset, bytes(self._buffer[len(self._buffer) - (self.end - offset) :])

    def text(self) -> str:
        start, data = self.read(0)
        if not start:
            return data.decode("utf-8", errors="replace")
        return trimmed_marker(start) + _skip_partial_char(data).decode("utf-8", errors="replace")

    @property
    def size(self) -> int:
        return min(len(self._buffer), self.cap)


def trimmed_marker(trimmed: int) -> str:
    return f"[cellbox: {trimmed} earlier bytes of output were trimmed]\n"


def _skip_partial_char(data: bytes) -> bytes:
    """Drop UTF-8 continuation bytes a trim left at the front."""
    skip = 0
    while skip < min(3, len(data)) and data[skip] & 0xC0 == 0x80:
        skip += 1
    return data[skip:]


def _complete_utf8(data: bytes) -> int:
    """Length of the longest prefix that does not end inside a UTF-8 character."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte & 0xC0 != 0x80:  # the lead byte of the last character
            needed = 2 if byte >= 0xC0 and byte < 0xE0 else 3 if 0xE0 <= byte < 0xF0 else 4 if byte >= 0xF0 else 1
            return len(data) if needed <= back else len(data) - back
    return len(data)


class Process:
    def __init__(self, command: str, cwd: str, env: dict[str, str], stdin: bool, timeout: float | None) -> None:
        self.id = "cmd_" + secrets.token_hex(6)
        self.command = command
        self.cwd = cwd
        self.timeout = timeout
        self.child = children.spawn(
            ["/bin/bash", "-c", command],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.stdout = OutputRing()
        self.stderr = OutputRing()
        self.finished = False
        self.timed_out = False
        self.exit_code: int | None = None
        # Guards the rings and the state; streams wait on it for news.
        self.changed = threading.Condition()
        self._stdin_lock = threading.Lock()
        self._stdin = self.child.popen.stdin

    def start_pump(self) -> None:
        threading.Thread(target=self._pump, name=f"process {self.id}", daemon=True).start()

    # The pump

    def _pump(self) -> None:
        popen = self.child.popen
        rings = {popen.stdout.fileno(): self.stdout, popen.stderr.fileno(): self.stderr}
        selector = selectors.DefaultSelector()
        for pipe in (popen.stdout, popen.stderr):
            os.set_blocking(pipe.fileno(), False)
            selector.register(pipe, selectors.EVENT_READ)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        exited_at: float | None = None
        try:
            while selector.get_map() or not self.finished:
                timeout = None
                if not self.finished:
                    now = time.monotonic()
                    if exited_at is None and not self.child.running:
                        exited_at = now
                    if exited_at is not None and now - exited_at >= _DRAIN_GRACE_S:
                        self._finish()
                    elif exited_at is None and deadline is not None and now >= deadline and not self.timed_out:
                        self.timed_out = True
                        self.child.signal_group(signal.SIGKILL)
                    # Exit does not close the pipes when a grandchild holds them: poll.
                    timeout = 0.05 if exited_at is not None else 0.25
                    if deadline is not None and not self.timed_out:
                        timeout = max(0.0, min(timeout, deadline - now))
                if not selector.get_map():  # the pipes are closed: nothing left to drain
                    if self.child.wait(timeout) is not None:
                        self._finish()
                    continue
                # Past the exit, keep reading what lingering grandchildren write:
                # closing the pipes would kill them with SIGPIPE.
                for key, _ in selector.select(timeout):
                    try:
                        chunk = os.read(key.fd, 65536)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        selector.unregister(key.fileobj)
                        continue
                    with self.changed:
                        rings[key.fd].add(chunk)
                        self.changed.notify_all()
        finally:
            selector.close()
            popen.stdout.close()
            popen.stderr.close()

    def _finish(self) -> None:
        if self.finished:
            return
        self.child.wait()
        with self._stdin_lock:
            self._close_stdin()
        with self.changed:
            self.exit_code = 124 if self.timed_out else self.child.returncode
            self.finished = True
            self.changed.notify_all()
        _retain(self)

    # Requests

    @property
    def status(self) -> str:
        if not self.finished:
            return "running"
        return "completed" if self.exit_code == 0 else "failed"

    def to_json(self, output: bool = True) -> dict:
        with self.changed:
            value = {
                "command_id": self.id,
                "pid": self.child.pid,
                "command": self.command,
                "cwd": self.cwd,
                "status": self.status,
                "exit_code": self.exit_code,
                "timed_out": self.timed_out,
                "stdin_open": self._stdin is not None,
                "started_at": iso_time(self.child.started_at),
                "ended_at": iso_time(self.child.ended_at) if self.finished else None,
                # Offsets the next byte of each stream will have: stream from here.
                "stdout_offset": self.stdout.end,
                "stderr_offset": self.stderr.end,
            }
            if output:
                value["stdout"] = self.stdout.text()
                value["stderr"] = self.stderr.text()
        return value

    def _close_stdin(self) -> None:
        if self._stdin is not None:
            try:
                self._stdin.close()
            except OSError:
                pass
            self._stdin = None

    def write_stdin(self, data: bytes, eof: bool) -> None:
        with self._stdin_lock:
            if self._stdin is None:
                why = "has finished" if self.finished else "has its stdin closed"
                raise HTTPError(409, f"process {self.id} {why}; it takes no more input", "stdin_closed")
            fd = self._stdin.fileno()
            os.set_blocking(fd, False)
            view = memoryview(data)
            deadline = time.monotonic() + _STDIN_WRITE_TIMEOUT_S
            try:
                while view:
                    try:
                        view = view[os.write(fd, view) :]
                    except BlockingIOError:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            raise HTTPError(
                                409,
                                f"process {self.id} is not reading its stdin "
                                f"({len(data) - len(view)} of {len(data)} bytes written)",
                                "stdin_full",
                            ) from None
                        select.select([], [fd], [], remaining)
            except BrokenPipeError:
                self._close_stdin()
                raise HTTPError(409, f"process {self.id} closed its stdin", "stdin_closed") from None
            if eof:
                self._close_stdin()

    def kill(self, sig: int) -> None:
        if self.child.running:
            self.child.signal_group(sig)
        else:
            # What the shell left behind (``cmd &``) is still in its group, and
            # the group's id cannot be reused while any member lives.
            try:
                os.killpg(self.child.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        with self.changed:
            self.changed.wait_for(lambda: self.finished, timeout=_KILL_WAIT_S)

    def stream(self, request: Request, offsets: dict[str, int]) -> Iterator[bytes]:
        """Output from ``offsets`` on as NDJSON, live, then the exit."""
        rings = {"stdout": self.stdout, "stderr": self.stderr}
        seen = {name: -1 for name in rings}
        while True:
            with self.changed:
                # Wake on new bytes, not on the held-back tail of a character.
                while not self.finished and all(rings[name].end == seen[name] for name in rings):
                    if not self.changed.wait(timeout=1.0) and request.client_gone():
                        return
                finished = self.finished
                pending = {name: ring.read(offsets[name]) for name, ring in rings.items()}
                for name, ring in rings.items():
                    seen[name] = ring.end
            lines = []
            for name, (start, data) in pending.items():
                text = ""
                if start > offsets[name]:  # the ring no longer has what the client asked for
                    text = trimmed_marker(start - offsets[name])
                    whole = _skip_partial_char(data)
                    start, data = start + len(data) - len(whole), whole
                # A character split across reads waits for its last bytes.
                size = len(data) if finished else _complete_utf8(data)
                text += data[:size].decode("utf-8", errors="replace")
                if text:
                    offsets[name] = start + size
                    lines.append(ndjson_line({"type": name, "text": text, "offset": start, "next_offset": offsets[name]}))
            if lines:
                yield b"".join(lines)
            if finished:
                yield ndjson_line({"type": "exit", "exit_code": self.exit_code, "status": self.status})
                return


# ─── The table ───────────────────────────────────────────────

_lock = threading.Lock()
_processes: dict[str, Process] = {}


def _retain(finished: Process) -> None:
    """Compact a finished process's output and forget the oldest past the bounds."""
    with finished.changed:
        finished.stdout.compact()
        finished.stderr.compact()
    with _lock:
        done = [p for p in _processes.values() if p.finished]  # oldest first
        kept_bytes = sum(p.stdout.size + p.stderr.size for p in done)
        while done and (len(done) > MAX_FINISHED or kept_bytes > FINISHED_OUTPUT_BUDGET):
            old = done.pop(0)
            del _processes[old.id]
            kept_bytes -= old.stdout.size + old.stderr.size


def _get(request: Request) -> Process:
    process = _processes.get(request.params["id"])
    if process is None:
        raise HTTPError(404, f"no process {request.params['id']} in this cell", "not_found")
    return process


def _signal(value: object) -> int:
    if value is None:
        return signal.SIGKILL
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < signal.NSIG:
        return value
    if isinstance(value, str):
        name = value.upper()
        name = name if name.startswith("SIG") else "SIG" + name
        try:
            return signal.Signals[name]
        except KeyError:
            pass
    raise HTTPError(400, f"unknown signal {value!r}; use e.g. 'SIGTERM', 'SIGKILL' or a number", "invalid_request")


def _offset(request: Request, name: str) -> int:
    try:
        value = int(request.query.get(name) or 0)
    except ValueError:
        value = -1
    if value < 0:
        raise HTTPError(400, f"{name!r} must be a byte offset (a non-negative integer)", "invalid_request")
    return value


@router.route("POST", "/processes")
def start_process(request: Request) -> Response:
    body = request.json()
    command = parse_command(body)
    stdin = body.get("stdin", True)
    if not isinstance(stdin, bool):
        raise HTTPError(400, "'stdin' must be true or false", "invalid_request")
    timeout = parse_timeout(body, None)
    cwd = resolve_cwd(body.get("cwd"))
    env = command_env(body.get("envs") or {})
    process = Process(command, cwd, env, stdin, timeout)
    with _lock:
        _processes[process.id] = process
    process.start_pump()
    return json_response(process.to_json(), 201)


@router.route("GET", "/processes")
def list_processes(request: Request) -> Response:
    output = (request.query.get("output") or "true").lower() not in ("0", "false", "no")
    with _lock:
        processes = list(_processes.values())
    return json_response({"processes": [p.to_json(output) for p in processes]})


@router.route("GET", "/processes/{id}")
def get_process(request: Request) -> Response:
    return json_response(_get(request).to_json())


@router.route("POST", "/processes/{id}/kill")
def kill_process(request: Request) -> Response:
    process = _get(request)
    process.kill(_signal(request.json().get("signal")))
    return json_response(process.to_json())


@router.route("DELETE", "/processes/{id}")
def delete_process(request: Request) -> Response:
    """Kill (SIGKILL) a process: the older client's verb for it."""
    process = _get(request)
    process.kill(signal.SIGKILL)
    return json_response(process.to_json())


@router.route("POST", "/processes/{id}/stdin")
def write_stdin(request: Request) -> Response:
    process = _get(request)
    body = request.json()
    data = body.get("data", "")
    if not isinstance(data, str):
        raise HTTPError(400, "'data' must be a string", "invalid_request")
    eof = body.get("eof", False)
    if not isinstance(eof, bool):
        raise HTTPError(400, "'eof' must be true or false", "invalid_request")
    process.write_stdin(data.encode("utf-8", errors="replace"), eof)
    return json_response(process.to_json(output=False))


@router.route("GET", "/processes/{id}/stream")
def stream_process(request: Request) -> Response:
    process = _get(request)
    offsets = {"stdout": _offset(request, "offset_stdout"), "stderr": _offset(request, "offset_stderr")}
    return Response(body=process.stream(request, offsets), content_type="application/x-ndjson")
