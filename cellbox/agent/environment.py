"""The environment user code runs in: working directory, variables, paths."""

from __future__ import annotations

import os
import posixpath
from datetime import datetime, timezone

from .http import HTTPError

# Tests run the agent outside a cell and point these elsewhere.
WORKDIR = os.environ.get("CELLBOX_AGENT_WORKDIR", "/data")
HOME = os.environ.get("HOME", "/home/user")

# The agent's own variables are not the user's business.
_PRIVATE_PREFIX = "CELLBOX_AGENT_"


def base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(_PRIVATE_PREFIX)}


def command_env(extra: dict) -> dict[str, str]:
    """The cell's environment plus the caller's variables for this one run."""
    if not isinstance(extra, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in extra.items()
    ):
        raise HTTPError(400, "'envs' must map strings to strings", "invalid_request")
    env = base_env()
    env.update(extra)
    return env


def resolve_path(path: str) -> str:
    """A user path inside the cell: relative ones start at /data.

    This runs in the cell's own mount namespace, so whatever the path says
    (``..``, symlinks, /proc/self/root) it cannot name a host file.
    """
    if not isinstance(path, str) or "\x00" in path:
        raise HTTPError(400, "'path' must be a string without NUL bytes", "invalid_request")
    return posixpath.normpath(posixpath.join(WORKDIR, path)) if path else WORKDIR


def resolve_cwd(cwd: object) -> str:
    if cwd is None or cwd == "":
        return WORKDIR
    if not isinstance(cwd, str):
        raise HTTPError(400, "'cwd' must be a string", "invalid_request")
    resolved = resolve_path(cwd)
    if not os.path.isdir(resolved):
        raise HTTPError(400, f"working directory {cwd!r} does not exist in the cell", "invalid_request")
    return resolved


def iso_time(timestamp: float | None) -> str | None:
    """A time as the API shows it: ISO 8601 in UTC, with the timezone."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat()
