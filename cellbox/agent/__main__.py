"""Start the agent: ``python3 -m cellbox_agent`` inside a cell.

The host hands the agent an already-listening unix socket as fd 3
(``CELLBOX_AGENT_LISTEN_FD``), so the socket's path lives only on the host and
nothing in the cell can replace it. ``CELLBOX_AGENT_SOCKET`` (a path) is for
running the agent outside a container.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys

from . import children, commands, execution, files, processes, pty, system
from .environment import WORKDIR
from .http import Router, serve_forever

_PR_SET_DUMPABLE = 4


def build_router() -> Router:
    router = Router()
    for service in (system, commands, files, processes, pty, execution):
        router.include(service.router)
    return router


def _listener() -> socket.socket:
    fd = os.environ.get("CELLBOX_AGENT_LISTEN_FD")
    if fd:
        return socket.socket(fileno=int(fd))
    path = os.environ["CELLBOX_AGENT_SOCKET"]
    if os.path.exists(path):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(128)
    return sock


def _harden() -> None:
    # User code runs under the same uid as the agent: being non-dumpable keeps it
    # from ptracing the agent or opening /proc/1/fd (the listening socket).
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    # As PID 1 of a pid namespace, a signal with the default action is ignored
    # when it comes from inside the cell; a handler would let user code reach us.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)


def main() -> None:
    listener = _listener()
    _harden()
    children.start_reaper()
    os.chdir(WORKDIR if os.path.isdir(WORKDIR) else "/")
    router = build_router()
    if os.environ.get("CELLBOX_AGENT_LISTEN_FD"):
        # Startup errors went to the host's log; from here on, nothing the cell does
        # should be able to grow a file on the host.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
    sys.stdout.flush()
    serve_forever(listener, router)


if __name__ == "__main__":
    main()
