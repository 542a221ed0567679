"""Isolation backends behind one small interface.

``oci.OciRuntime`` drives an OCI runtime binary (runc by default; crun, runsc or
kata-runtime by configuration). Nothing above this package knows which backend
runs a cell; it only sees ``Runtime`` and ``CellSpec``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class Limits:
    memory_mb: int = 512
    cpu_count: float = 1.0
    pids: int = 256
    disk_mb: int = 2048


# Each cell gets its own range of host ids for its user namespace: root in the cell
# is ``id_base`` on the host and the cell user ``id_base + 1000``. Distinct ranges keep
# cells apart even outside their namespaces (signals, per-uid kernel limits, files).
FIRST_ID_BASE = 100000
ID_RANGE = 65536


def id_base(slot: int) -> int:
    """The first host id of a slot's range; slot 0 is for template builds."""
    return FIRST_ID_BASE + slot * ID_RANGE


@dataclass(frozen=True)
class CellSpec:
    cell_id: str
    limits: Limits
    envs: dict[str, str] = field(default_factory=dict)
    id_base: int = FIRST_ID_BASE
    # From a template: its read-only layer (at /opt/template), the cell's working
    # directory, and the name of its user with the passwd/group files that give it.
    layer: Path | None = None
    workdir: str | None = None
    user: str | None = None
    user_db: Path | None = None


class CellRuntimeError(Exception):
    """A runtime operation failed; the message says what and carries the runtime's own words."""


class Runtime(Protocol):
    name: str

    async def start(self, spec: CellSpec, restore_from: Path | None = None, restore_id_base: int | None = None) -> None:
        """Start the cell's container with the agent as its first process; its disk
        restored from a (verified) snapshot archive when one is given, whose files
        belonged to ``restore_id_base``'s range."""

    async def pause(self, cell_id: str) -> None:
        """Freeze every process of the cell."""

    async def resume(self, cell_id: str) -> None:
        """Thaw a paused cell."""

    async def snapshot(self, cell_id: str, target: Path) -> tuple[int, str]:
        """Archive a frozen cell's disk to ``target``: (size in bytes, SHA-256)."""

    async def destroy(self, cell_id: str) -> None:
        """Stop every process of the cell and free its resources. Idempotent."""

    def alive(self, cell_id: str) -> bool:
        """Whether the cell's first process still runs (a cheap check, no runtime call)."""

    async def status(self, cell_id: str) -> str | None:
        """``running``, ``paused``, ``stopped``, or None when no container exists."""

    async def list_cells(self) -> dict[str, str]:
        """Every container this runtime knows, with its status."""

    def agent_socket(self, cell_id: str) -> Path:
        """Where the cell's agent answers HTTP."""

    async def check(self) -> None:
        """Raise if the runtime cannot run cells on this host."""

    async def ping(self) -> bool:
        """Whether the runtime answers now (for health checks)."""
