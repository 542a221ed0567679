"""Foreground shell commands: run, capture bounded output, enforce a timeout."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time

from . import children
from .environment import command_env, resolve_cwd
from .http import HTTPError, Request, Response, Router, json_response

router = Router()

DEFAULT_OUTPUT_CAP = 10 * 1024 * 1024
# After the command exits, how long to keep reading output that is still in flight
# before giving up on a pipe held open by a background grandchild.
_DRAIN_GRACE_S = 0.2


class BoundedOutput:
    """Keeps the first ``cap`` bytes of a stream and counts the rest."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        room = self.cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        self.dropped += max(0, len(chunk) - max(room, 0))

    def text(self) -> str:
        out = self.data.decode("utf-8", errors="replace")
        if self.dropped:
            out += f"\n[cellbox: output truncated, {self.dropped} more bytes not kept]\n"
        return out


def run_foreground(
    command: str,
    cwd: str,
    env: dict[str, str],
    timeout: float,
    output_cap: int = DEFAULT_OUTPUT_CAP,
) -> dict:
    started = time.monotonic()
    child = children.spawn(
        ["/bin/bash", "-c", command],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    outputs = {child.popen.stdout: BoundedOutput(output_cap), child.popen.stderr: BoundedOutput(output_cap)}
    selector = selectors.DefaultSelector()
    for pipe in outputs:
        os.set_blocking(pipe.fileno(), False)
        selector.register(pipe, selectors.EVENT_READ)
    deadline = started + timeout
    timed_out = False
    exited_at: float | None = None
    try:
        while selector.get_map():
            now = time.monotonic()
            if exited_at is None and not child.running:
                exited_at = now
            if exited_at is not None and now - exited_at > _DRAIN_GRACE_S:
                break
            if exited_at is None and now >= deadline:
                timed_out = True
                child.signal_group(signal.SIGKILL)
                child.wait(5)
                exited_at = time.monotonic()
            for key, _ in selector.select(timeout=0.05):
                chunk = os.read(key.fd, 65536)
                if chunk:
                    outputs[key.fileobj].add(chunk)
                else:
                    selector.unregister(key.fileobj)
        remaining = max(0.0, deadline - time.monotonic())
        if child.wait(remaining) is None:
            timed_out = True
            child.signal_group(signal.SIGKILL)
            child.wait(5)
    finally:
        selector.close()
        for pipe in outputs:
            pipe.close()
    stdout, stderr = outputs.values()
    result_stderr = stderr.text()
    if timed_out:
        result_stderr += f"\n[cellbox: command timed out after {timeout:g} s and was killed]\n"
    return {
        "stdout": stdout.text(),
        "stderr": result_stderr,
        "exit_code": child.returncode if not timed_out else 124,
        "timed_out": timed_out,
        "pid": child.pid,
        "latency_ms": round((time.monotonic() - started) * 1000, 3),
    }


def parse_command(body: dict) -> str:
    command = body.get("command")
    if not isinstance(command, str) or not command.strip():
        raise HTTPError(400, "'command' must be a non-empty string", "invalid_request")
    return command


def parse_timeout(body: dict, default: float | None) -> float | None:
    """The request's ``timeout`` in seconds; absent (or 0) means ``default``."""
    timeout = body.get("timeout") or default
    if timeout is None:
        return None
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        raise HTTPError(400, "'timeout' must be a positive number of seconds", "invalid_request")
    return float(timeout)


@router.route("POST", "/commands/run")
def run_command(request: Request) -> Response:
    body = request.json()
    command = parse_command(body)
    timeout = parse_timeout(body, 60)
    cwd = resolve_cwd(body.get("cwd"))
    env = command_env(body.get("envs") or {})
    cap = int(body.get("output_cap") or DEFAULT_OUTPUT_CAP)
    return json_response(run_foreground(command, cwd, env, timeout, cap))
