"""Many clients at once, for the load budget in architecture.md. Run by hand:

    .venv/bin/python bench/load.py --clients 200 --seconds 60

Each client loops over a mix of calls (exec, cmd, file write and read, info) on one of
a few shared cells, over its own keep-alive connection. Reports requests, errors and
latency percentiles, then what the server holds afterwards (open files, threads,
memory), which should fall back once the clients stop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def server_figures(pid: int) -> str:
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    return f"open files {fds}, threads {status['Threads'].strip()}, RSS {status['VmRSS'].strip()}"


async def client_loop(url: str, key: str, cells: list[str], deadline: float, latencies: list, errors: Counter) -> None:
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        n = 0
        while time.monotonic() < deadline:
            cell = random.choice(cells)
            n += 1
            kind = random.choice(["exec", "cmd", "write", "read", "info"])
            started = time.perf_counter()
            try:
                if kind == "exec":
                    r = await client.post(f"/v1/cells/{cell}/exec", json={"code": "sum(range(1000))"})
                elif kind == "cmd":
                    r = await client.post(f"/v1/cells/{cell}/cmd", json={"command": "echo hi"})
                elif kind == "write":
                    r = await client.post(f"/v1/cells/{cell}/files", json={"path": f"load/{n % 50}.txt", "content": "x" * 100})
                elif kind == "read":
                    r = await client.get(f"/v1/cells/{cell}/files/exists", params={"path": "load/1.txt"})
                else:
                    r = await client.get(f"/v1/cells/{cell}")
                if r.status_code >= 400:
                    errors[f"{kind} {r.status_code} {r.text[:80]}"] += 1
            except httpx.HTTPError as exc:
                errors[f"{kind} {type(exc).__name__}"] += 1
            latencies.append((time.perf_counter() - started) * 1000)


async def run(url: str, key: str, cells: list[str], clients: int, seconds: float) -> tuple[list, Counter]:
    latencies: list[float] = []
    errors: Counter = Counter()
    deadline = time.monotonic() + seconds
    await asyncio.gather(*(client_loop(url, key, cells, deadline, latencies, errors) for _ in range(clients)))
    return latencies, errors


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--cells", type=int, default=10)
    args = parser.parse_args()
    from tests.conftest import serving

    with contextlib.ExitStack() as stack:
        server = stack.enter_context(serving("cellbox-load-"))
        pid = server.proc.pid  # type: ignore[union-attr]
        api = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.key}"}, timeout=120)
        cells = [api.post("/v1/cells", json={}).json()["cell_id"] for _ in range(args.cells)]
        print(f"before: {server_figures(pid)}")
        latencies, errors = asyncio.run(run(server.url, server.key, cells, args.clients, args.seconds))
        ordered = sorted(latencies)
        print(f"{len(ordered)} requests from {args.clients} clients in {args.seconds:g} s "
              f"({len(ordered) / args.seconds:.0f}/s); errors: {sum(errors.values())}")
        for text, count in errors.most_common(10):
            print(f"  {count} × {text}")
        print(f"latency p50 {statistics.median(ordered):.1f} ms, p99 {ordered[int(0.99 * len(ordered))]:.1f} ms")
        time.sleep(3)
        print(f"after:  {server_figures(pid)} (kept-alive agent connections: up to 8 per cell)")
        for cell in cells:
            api.delete(f"/v1/cells/{cell}")
        time.sleep(3)
        print(f"after the cells are killed: {server_figures(pid)}")


if __name__ == "__main__":
    main()
