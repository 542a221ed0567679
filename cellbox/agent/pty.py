"""Interactive terminals: a shell on a pseudo-terminal, over an upgraded connection.

``GET /pty?cols=&rows=&cmd=&cwd=`` with ``Connection: Upgrade`` and
``Upgrade: cellbox-pty`` answers ``101`` and the connection becomes a byte pipe
of frames, both ways: one type byte, a 4-byte big-endian payload length, the
payload. Type 0 carries terminal bytes; type 1 a JSON control message: from the
client ``{"type": "resize", "cols", "rows"}`` and ``{"type": "kill"}``; from the
agent ``{"type": "connected", "pid"}`` first and ``{"type": "exit",
"exit_code"}`` last. The host turns this into the public WebSocket.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import select
import signal
import socket
import struct
import termios
import time

from . import children
from .environment import command_env, resolve_cwd
from .http import HTTPError, Request, Response, Router, Upgrade

router = Router()

PROTOCOL = "cellbox-pty"
FRAME_DATA = 0
FRAME_CONTROL = 1
_HEADER = struct.Struct(">BI")
_MAX_FRAME = 1024 * 1024
_MAX_PENDING_INPUT = 1024 * 1024
# After the shell exits, how long to keep forwarding output a background job
# still holding the terminal writes.
_DRAIN_GRACE_S = 0.2


def frame(kind: int, payload: bytes) -> bytes:
    return _HEADER.pack(kind, len(payload)) + payload


def control(message: dict) -> bytes:
    return frame(FRAME_CONTROL, json.dumps(message).encode())


def _set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _take_terminal() -> None:
    # Runs in the child between fork and exec, after setsid (start_new_session):
    # the terminal on fd 0 becomes its controlling terminal, so job control and
    # ^C work.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _size(request: Request, name: str, default: int) -> int:
    try:
        value = int(request.query.get(name) or default)
    except ValueError:
        value = 0
    if not 0 < value < 10000:
        raise HTTPError(400, f"{name!r} must be a positive number of characters", "invalid_request")
    return value


def signal_session(session: int, sig: int) -> None:
    """Signal every process of a terminal's session: jobs get their own groups."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 3 and int(fields[3]) == session:  # state, ppid, pgrp, session
            try:
                os.kill(int(entry), sig)
            except (ProcessLookupError, PermissionError):
                pass


class Terminal:
    """A shell on a pty, and the framed connection that drives it."""

    def __init__(self, argv: list[str], cwd: str, env: dict[str, str], cols: int, rows: int) -> None:
        self.master, slave = os.openpty()
        try:
            _set_size(self.master, cols, rows)
            self.child = children.spawn(
                argv, cwd=cwd, env=env, stdin=slave, stdout=slave, stderr=slave, preexec_fn=_take_terminal
            )
        except BaseException:
            os.close(self.master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(self.master, False)
        self._closed = False

    def run(self, sock: socket.socket, trailing: bytes) -> None:
        """Pump frames between ``sock`` and the terminal until either ends."""
        try:
            sock.sendall(control({"type": "connected", "pid": self.child.pid}))
            self._pump(sock, bytearray(trailing))
        except OSError:
            pass  # the client went away
        finally:
            self.close()

    def _pump(self, sock: socket.socket, inbox: bytearray) -> None:
        pending_input = bytearray()
        sock_fd = sock.fileno()
        poller = select.poll()
        poller.register(sock_fd, select.POLLIN)
        poller.register(self.master, select.POLLIN)
        master_open = True
        exited_at: float | None = None
        while True:
            if inbox and not self._take_frames(inbox, pending_input):
                return
            if pending_input and master_open:
                try:
                    del pending_input[: os.write(self.master, pending_input)]
                except BlockingIOError:
                    pass
                except OSError:
                    pending_input.clear()
            # Stop reading the client while the shell is not taking its input.
            poller.modify(sock_fd, select.POLLIN if len(pending_input) < _MAX_PENDING_INPUT else 0)
            if master_open:
                poller.modify(self.master, select.POLLIN | (select.POLLOUT if pending_input else 0))
            if not self.child.running:
                exited_at = exited_at or time.monotonic()
                if not master_open or time.monotonic() - exited_at > _DRAIN_GRACE_S:
                    break
            # Polling with a timeout notices the shell's exit while a background
            # job still holds the terminal open.
            for fd, events in poller.poll(50 if exited_at else 250):
                if fd == sock_fd:
                    data = sock.recv(65536)
                    if not data:
                        return  # the client hung up: close() kills the session
                    inbox += data
                elif fd == self.master and events & (select.POLLIN | select.POLLHUP | select.POLLERR):
                    try:
                        output = os.read(self.master, 65536)
                    except BlockingIOError:
                        continue
                    except OSError as exc:
                        if exc.errno != errno.EIO:
                            raise
                        output = b""  # EIO: no process holds the terminal any more
                    if output:
                        sock.sendall(frame(FRAME_DATA, output))
                    else:
                        master_open = False
                        poller.unregister(self.master)
                        self.child.wait(1)
        sock.sendall(control({"type": "exit", "exit_code": self.child.wait(1)}))

    def _take_frames(self, inbox: bytearray, pending_input: bytearray) -> bool:
        """Act on the complete frames in ``inbox``; False on a broken frame."""
        while len(inbox) >= _HEADER.size:
            kind, length = _HEADER.unpack_from(inbox)
            if length > _MAX_FRAME:
                return False
            if len(inbox) < _HEADER.size + length:
                break
            payload = bytes(inbox[_HEADER.size : _HEADER.size + length])
            del inbox[: _HEADER.size + length]
            if kind == FRAME_DATA:
                pending_input += payload
            elif kind == FRAME_CONTROL:
                self._control(payload)
        return True

    def _control(self, payload: bytes) -> None:
        try:
            message = json.loads(payload)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        if message.get("type") == "resize":
            cols, rows = message.get("cols"), message.get("rows")
            if isinstance(cols, int) and isinstance(rows, int) and 0 < cols < 10000 and 0 < rows < 10000:
                _set_size(self.master, cols, rows)  # the kernel sends SIGWINCH
        elif message.get("type") == "kill":
            signal_session(self.child.pid, signal.SIGKILL)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        signal_session(self.child.pid, signal.SIGKILL)
        self.child.signal_group(signal.SIGKILL)
        os.close(self.master)


@router.route("GET", "/pty")
def open_terminal(request: Request) -> Response:
    connection = {token.strip().lower() for token in request.headers.get("connection", "").split(",")}
    if "upgrade" not in connection or request.headers.get("upgrade", "").lower() != PROTOCOL:
        raise HTTPError(
            426, f"a terminal needs 'Connection: Upgrade' and 'Upgrade: {PROTOCOL}'", "upgrade_required"
        )
    cols, rows = _size(request, "cols", 80), _size(request, "rows", 24)
    command = request.query.get("cmd")
    argv = ["/bin/bash", "-c", command] if command else ["/bin/bash", "-i"]
    try:
        extra = json.loads(request.query.get("envs") or "{}")
    except ValueError:
        raise HTTPError(400, "'envs' must be a JSON object of strings", "invalid_request")
    env = command_env(extra)
    env["TERM"] = "xterm-256color"
    terminal = Terminal(argv, resolve_cwd(request.query.get("cwd")), env, cols, rows)
    # on_close runs even if the 101 never reached the client.
    return Upgrade(protocol=PROTOCOL, take_over=terminal.run, on_close=terminal.close)
