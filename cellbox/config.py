"""One Config, built from the command line and the environment, passed down."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .runtime import Limits


def _env(name: str, default: str) -> str:
    return os.environ.get(f"CELLBOX_{name}", default)


def _flag(name: str) -> bool:
    return _env(name, "").strip().lower() in ("1", "true", "yes", "on")


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
        config = cls(
            host=_env("HOST", cls.host),
            port=int(_env("PORT", str(cls.port))),
            data_dir=Path(_env("DATA_DIR", str(cls.data_dir))),
            database_url=os.environ.get("CELLBOX_DATABASE_URL"),
            runtime=_env("RUNTIME", cls.runtime),
            agent_python=_env("AGENT_PYTHON", cls.agent_python),
            seccomp_profile=os.environ.get("CELLBOX_SECCOMP_PROFILE"),
            retention_s=float(_env("RETENTION_S", str(cls.retention_s))),
            max_body_bytes=int(_env("MAX_BODY_BYTES", str(cls.max_body_bytes))),
            bootstrap_api_key=os.environ.get("CELLBOX_API_KEY"),
            fetch_allow_private=_flag("FETCH_ALLOW_PRIVATE"),
            fetch_max_bytes=int(_env("FETCH_MAX_BYTES", str(cls.fetch_max_bytes))),
            fetch_max_redirects=int(_env("FETCH_MAX_REDIRECTS", str(cls.fetch_max_redirects))),
            fetch_max_timeout_s=float(_env("FETCH_MAX_TIMEOUT_S", str(cls.fetch_max_timeout_s))),
            events_heartbeat_s=float(_env("EVENTS_HEARTBEAT_S", str(cls.events_heartbeat_s))),
            webhook_allow_private=_flag("WEBHOOK_ALLOW_PRIVATE"),
            webhook_retry_base_s=float(_env("WEBHOOK_RETRY_BASE_S", str(cls.webhook_retry_base_s))),
            webhook_max_attempts=int(_env("WEBHOOK_MAX_ATTEMPTS", str(cls.webhook_max_attempts))),
            webhook_timeout_s=float(_env("WEBHOOK_TIMEOUT_S", str(cls.webhook_timeout_s))),
            webhook_concurrency=int(_env("WEBHOOK_CONCURRENCY", str(cls.webhook_concurrency))),
            template_pip_args=_env("TEMPLATE_PIP_ARGS", cls.template_pip_args),
            template_npm_args=_env("TEMPLATE_NPM_ARGS", cls.template_npm_args),
            template_build_timeout_s=float(_env("TEMPLATE_BUILD_TIMEOUT_S", str(cls.template_build_timeout_s))),
            template_build_memory_mb=int(_env("TEMPLATE_BUILD_MEMORY_MB", str(cls.template_build_memory_mb))),
            template_builds_at_once=int(_env("TEMPLATE_BUILDS_AT_ONCE", str(cls.template_builds_at_once))),
            template_files_max_bytes=int(_env("TEMPLATE_FILES_MAX_BYTES", str(cls.template_files_max_bytes))),
            template_ready_timeout_s=float(_env("TEMPLATE_READY_TIMEOUT_S", str(cls.template_ready_timeout_s))),
            exec_timeout_s=float(_env("EXEC_TIMEOUT_S", str(cls.exec_timeout_s))),
            pool_size=int(_env("POOL_SIZE", str(cls.pool_size))),
            max_cells_per_key=int(_env("MAX_CELLS_PER_KEY", str(cls.max_cells_per_key))),
            max_snapshot_bytes_per_key=int(_env("MAX_SNAPSHOT_BYTES_PER_KEY", str(cls.max_snapshot_bytes_per_key))),
            min_free_disk_bytes=int(_env("MIN_FREE_DISK_BYTES", str(cls.min_free_disk_bytes))),
            exec_output_cap=int(_env("EXEC_OUTPUT_CAP", str(cls.exec_output_cap))),
            evict_after_s=float(_env("EVICT_AFTER_S", str(cls.evict_after_s))),
        )
        for name, value in overrides.items():
            if value is not None:
                setattr(config, name, value)
        config.data_dir = Path(config.data_dir).resolve()
        return config
