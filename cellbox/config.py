"""One Config, built from the command line and the environment, passed down."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from .runtime import Limits


def _flag(raw: str) -> bool:
    return raw.strip().lower() in ("1", "true", "yes", "on")


# How a setting's environment variable is read, by the field's (string) annotation.
# Fields of other types (the limits) are not read from the environment.
_PARSERS = {"str": str, "str | None": str, "int": int, "float": float, "Path": Path, "bool": _flag}
# Every setting is CELLBOX_<FIELD NAME>, except these.
_ENV_NAMES = {"bootstrap_api_key": "CELLBOX_API_KEY"}


def env_name(setting: str) -> str:
    return _ENV_NAMES.get(setting, f"CELLBOX_{setting.upper()}")


@dataclass
class Config:
    host: str = "127.0.0.1"
    port: int = 8001
    data_dir: Path = Path("/var/lib/cellbox")
    database_url: str | None = None  # default: SQLite in the data directory
    runtime: str = "runc"
    agent_python: str = "/usr/bin/python3"
    seccomp_profile: str | None = None
    # Killed cells stay readable this long, then their records are purged.
    retention_s: float = 24 * 3600
    default_timeout_s: float = 3600
    default_limits: Limits = field(default_factory=Limits)
    max_limits: Limits = field(
        default_factory=lambda: Limits(memory_mb=16384, cpu_count=float(os.cpu_count() or 1), pids=4096, disk_mb=65536)
    )
    max_body_bytes: int = 64 * 1024 * 1024
    command_timeout_s: float = 60
    exec_timeout_s: float = 300
    # Per API key: live (running or paused) cells, and bytes of snapshots kept.
    max_cells_per_key: int = 100
    max_snapshot_bytes_per_key: int = 20 * 1024**3
    # Below this much free space in the data directory, no new cell or snapshot.
    min_free_disk_bytes: int = 1024**3
    # Cells kept started ahead of time (default limits, built-in templates); 0 turns it off.
    pool_size: int = 2
    # stdout and stderr of an execution beyond this many bytes each are cut with a marker.
    exec_output_cap: int = 10 * 1024 * 1024
    # A paused cell's container is stopped after this long; only its snapshot is kept.
    evict_after_s: float = 600
    # How long a pause waits for executions and commands in flight to finish.
    pause_drain_s: float = 30
    max_exec_timeout_s: float = 3600
    max_command_timeout_s: float = 3600
    # Revoking a key takes effect on a running server within this many seconds.
    key_cache_s: float = 2.0
    bootstrap_api_key: str | None = None
    # Host-side fetch: private destinations are refused unless the operator allows them.
    fetch_allow_private: bool = False
    fetch_max_bytes: int = 50 * 1024 * 1024
    fetch_max_redirects: int = 5
    fetch_max_timeout_s: float = 300
    # Events: SSE heartbeat; webhooks: delivery schedule and bounds.
    events_heartbeat_s: float = 15
    webhook_allow_private: bool = False
    webhook_retry_base_s: float = 5
    webhook_max_attempts: int = 8
    webhook_timeout_s: float = 10
    webhook_concurrency: int = 4
    # Templates: extra arguments to the host-side `pip download` / `npm install` (e.g. --find-links DIR),
    # bounds of a build, and how long a new cell waits for a template's ready_command.
    template_pip_args: str = ""
    template_npm_args: str = ""
    template_build_timeout_s: float = 900
    template_build_memory_mb: int = 2048
    template_builds_at_once: int = 2
    template_files_max_bytes: int = 32 * 1024 * 1024
    template_ready_timeout_s: float = 60

    @classmethod
    def from_env(cls, **overrides: object) -> "Config":
        """Defaults, then CELLBOX_* variables, then the command line's ``overrides``."""
        values: dict[str, object] = {}
        for setting in fields(cls):
            parse = _PARSERS.get(str(setting.type))
            raw = os.environ.get(env_name(setting.name))
            if parse is None or raw is None:
                continue
            try:
                values[setting.name] = parse(raw)
            except ValueError:
                raise ValueError(f"{env_name(setting.name)}={raw!r} is not a valid {setting.type}") from None
        config = cls(**values)  # type: ignore[arg-type]
        for name, value in overrides.items():
            if value is not None:
                setattr(config, name, value)
        config.data_dir = Path(config.data_dir).resolve()
        return config
