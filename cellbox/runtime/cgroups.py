"""Reading a cell's resource use from its cgroup, on v1 (and hybrid) and v2 hosts.

The runtime puts each cell in ``/cellbox/<id>`` under every controller (v1) or in
the unified tree (v2). Missing files read as None: a counter the kernel does not
offer is unknown, not zero.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _read_keyed(path: Path, key: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return None


def is_v2() -> bool:
    return (ROOT / "cgroup.controllers").exists()


def usage(cell_id: str) -> dict[str, float | int | None]:
    """cpu_seconds (total so far), memory_bytes, memory_peak_bytes, pids."""
    if is_v2():
        group = ROOT / "cellbox" / cell_id
        usec = _read_keyed(group / "cpu.stat", "usage_usec")
        return {
            "cpu_seconds": usec / 1e6 if usec is not None else None,
            "memory_bytes": _read_int(group / "memory.current"),
            "memory_peak_bytes": _read_int(group / "memory.peak"),
            "pids": _read_int(group / "pids.current"),
        }
    nanoseconds = _read_int(ROOT / "cpuacct" / "cellbox" / cell_id / "cpuacct.usage")
    memory = ROOT / "memory" / "cellbox" / cell_id
    return {
        "cpu_seconds": nanoseconds / 1e9 if nanoseconds is not None else None,
        "memory_bytes": _read_int(memory / "memory.usage_in_bytes"),
        "memory_peak_bytes": _read_int(memory / "memory.max_usage_in_bytes"),
        "pids": _read_int(ROOT / "pids" / "cellbox" / cell_id / "pids.current"),
    }


def disk_used(mount_point: Path) -> int | None:
    try:
        st = os.statvfs(mount_point)
    except OSError:
        return None
    return (st.f_blocks - st.f_bfree) * st.f_frsize
