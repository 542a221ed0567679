"""Child processes of the agent, and the reaper that PID 1 must be.

The agent is the cell's first process, so every orphan in the cell is re-parented
to it and must be reaped. One thread blocks in ``waitpid(-1)`` and reaps
everything; exit statuses of the children the agent started itself are handed to
their ``Child`` objects, orphans are simply collected. Nothing else in the agent
may call ``waitpid`` (``Popen.wait``/``poll`` included): use ``Child.wait``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from typing import Any

_lock = threading.Lock()
_children: dict[int, "Child"] = {}
_have_children = threading.Condition(_lock)
_reaper_started = False


class Child:
    """A process the agent started; its exit status arrives from the reaper."""

    def __init__(self, popen: subprocess.Popen) -> None:
        self.popen = popen
        self.pid = popen.pid
        self.returncode: int | None = None
        self.started_at = time.time()
        self.ended_at: float | None = None
        self._exited = threading.Event()

    def _set_status(self, status: int) -> None:
        self.returncode = os.waitstatus_to_exitcode(status)
        self.ended_at = time.time()
        # Keep Popen from trying to reap a pid that is already gone.
        self.popen.returncode = self.returncode
        self._exited.set()

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit code (negative signal number when killed), or None on timeout."""
        self._exited.wait(timeout)
        return self.returncode

    @property
    def running(self) -> bool:
        return not self._exited.is_set()

    def signal_group(self, sig: int = signal.SIGKILL) -> None:
        """Signal the child's whole process group (children are session leaders)."""
        if not self.running:
            return
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


def spawn(argv: list[str], **popen_kwargs: Any) -> Child:
    """Start a process in its own session and register it with the reaper."""
    popen_kwargs.setdefault("start_new_session", True)
    popen_kwargs.setdefault("close_fds", True)
    with _lock:
        popen = subprocess.Popen(argv, **popen_kwargs)
        # Registered before the lock is released, so the reaper cannot reap this pid
        # first and mistake it for an orphan, however fast it exits.
        child = Child(popen)
        _children[child.pid] = child
        _have_children.notify_all()
    _prefer_for_oom(child.pid)
    return child


def _prefer_for_oom(pid: int) -> None:
    """Make what the agent starts the OOM killer's first choice in the cell, not the agent.

    Raising a score needs no privilege. What the child forks before this write keeps
    the default score; that is rare, and a dead agent is noticed by the server anyway.
    """
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass


def _reap_forever() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            with _lock:
                _have_children.wait(timeout=1.0)
            continue
        except InterruptedError:
            continue
        with _lock:
            child = _children.pop(pid, None)
            if child is not None:
                child._set_status(status)


def start_reaper() -> None:
    global _reaper_started
    with _lock:
        if _reaper_started:
            return
        _reaper_started = True
    threading.Thread(target=_reap_forever, name="reaper", daemon=True).start()
