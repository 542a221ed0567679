"""Memory of idle cells, for the density budget in architecture.md. Run by hand:

    .venv/bin/python bench/density.py -n 50

Creates N cells, runs one Python execution in each (so each has its agent and a
Python kernel), then reports the proportional set size (PSS: shared pages divided
among the processes sharing them) of every process in the cells, per cell.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def pss_kib(pid: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def cell_pids(cell_id: str) -> list[str]:
    for procs in (f"/sys/fs/cgroup/pids/cellbox/{cell_id}/cgroup.procs", f"/sys/fs/cgroup/cellbox/{cell_id}/cgroup.procs"):
        if Path(procs).exists():
            return Path(procs).read_text().split()
    return []


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=50)
    args = parser.parse_args()
    from tests.conftest import serving

    with contextlib.ExitStack() as stack:
        server = stack.enter_context(serving(
            "cellbox-density-", {"CELLBOX_POOL_SIZE": "0", "CELLBOX_MAX_CELLS_PER_KEY": str(args.n + 10)}
        ))
        client = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}, timeout=120)
        cells = []
        started = time.monotonic()
        for _ in range(args.n):
            response = client.post("/v1/cells", json={})
            assert response.status_code == 201, response.text
            cell_id = response.json()["cell_id"]
            client.post(f"/v1/cells/{cell_id}/exec", json={"code": "1"})
            cells.append(cell_id)
        elapsed = time.monotonic() - started
        time.sleep(2)
        per_cell = [sum(pss_kib(pid) for pid in cell_pids(c)) for c in cells]
        total_mib = sum(per_cell) / 1024
        print(f"{args.n} idle python cells in {elapsed:.1f} s")
        print(f"PSS per cell: mean {total_mib / args.n:.1f} MiB, max {max(per_cell) / 1024:.1f} MiB; total {total_mib:.0f} MiB")
        for cell_id in cells:
            client.delete(f"/v1/cells/{cell_id}")


if __name__ == "__main__":
    main()
