"""One Config, built from the command line and the environment, passed down."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .runtime import Limits


def _env(name: str, default: str) -> str:
    return os.environ.get(f"CELLBOX_{name}", default)


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
    max_command_timeout_s: float = 3600
    # Revoking a key takes effect on a running server within this many seconds.
    key_cache_s: float = 2.0
    bootstrap_api_key: str | None = None

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
        )
        for name, value in overrides.items():
            if value is not None:
                setattr(config, name, value)
        config.data_dir = Path(config.data_dir).resolve()
        return config
