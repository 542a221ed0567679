"""Latency figures for the budgets in architecture.md. Run by hand, never in CI:

    .venv/bin/python bench/latency.py            # starts its own server in a temp dir
    .venv/bin/python bench/latency.py --url http://127.0.0.1:8001 --key cell_sk_live_...

Prints p50/p99 of: cell create from the warm pool and cold, `exec` of 1+1 in a warm cell over keep-alive,
a foreground `cmd`, and the delay between a `print` in the cell and its SSE event
reaching the client (same host clock).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]
    return f"p50 {statistics.median(ordered):7.2f} ms   p99 {p(0.99):7.2f} ms   (n={len(ordered)})"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url")
    parser.add_argument("--key")
    parser.add_argument("-n", type=int, default=300)
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        if args.url is None:
            from tests.conftest import serving

            server = stack.enter_context(serving("cellbox-bench-"))
            args.url, args.key = server.url, server.key
        measure(args)


def measure(args: argparse.Namespace) -> None:
    client = httpx.Client(base_url=args.url, headers={"Authorization": f"Bearer {args.key}"}, timeout=60)
    cells = []
    try:
        warm, cold = [], []
        for _ in range(10):
            time.sleep(1.5)  # let the warm pool refill
            start = time.perf_counter()
            cells.append(client.post("/v1/cells", json={}).json()["cell_id"])
            warm.append((time.perf_counter() - start) * 1000)
        print(f"create (warm pool)   {percentiles(warm)}")
        for _ in range(10):
            # Limits other than the defaults never come from the pool.
            start = time.perf_counter()
            cells.append(client.post("/v1/cells", json={"memory_mb": 500}).json()["cell_id"])
            cold.append((time.perf_counter() - start) * 1000)
        print(f"create (cold)        {percentiles(cold)}")
        cell = cells[0]
        client.post(f"/v1/cells/{cell}/exec", json={"code": "1+1"})  # start the kernel
        execs = [timed(lambda: client.post(f"/v1/cells/{cell}/exec", json={"code": "1+1"})) for _ in range(args.n)]
        print(f"exec 1+1 (warm)      {percentiles(execs)}")
        cmds = [timed(lambda: client.post(f"/v1/cells/{cell}/cmd", json={"command": "true"})) for _ in range(args.n // 3)]
        print(f"cmd true             {percentiles(cmds)}")
        gets = [timed(lambda: client.get(f"/v1/cells/{cell}")) for _ in range(args.n)]
        print(f"GET cell info        {percentiles(gets)}")
        delays = []
        for _ in range(30):
            code = "import time\nprint(time.time(), flush=True)\ntime.sleep(0.05)"
            with client.stream("POST", f"/v1/cells/{cell}/exec/stream", json={"code": code}) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        event = json.loads(line[6:])
                        if event["type"] == "stdout":
                            delays.append((time.time() - float(event["text"])) * 1000)
                        if event["type"] == "result":
                            break
        print(f"print -> SSE event   {percentiles(delays)}")
    finally:
        for cell in cells:
            client.delete(f"/v1/cells/{cell}")


if __name__ == "__main__":
    main()
