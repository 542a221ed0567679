"""Usage accounting per tenant, the dashboard's numbers, and Prometheus metrics.

Counters that move on hot paths (executions, commands) are kept in memory and
written to the store in the background, like activity times; a reader adds what
is not written yet, so nothing is lost between flushes while the server runs.
"""

from __future__ import annotations

import collections
import os
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# How the usage counters merge: most add up; a peak keeps the largest value.
PEAK_COUNTERS = {"memory_peak_bytes"}
USAGE_COUNTERS = (
    "cells_created", "executions", "commands", "cell_seconds", "cpu_seconds",
    "memory_peak_bytes", "fetches", "fetch_bytes",
)


class Usage:
    def __init__(self, store: Any) -> None:
        self.store = store
        self._pending: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self._peaks: dict[str, dict[str, float]] = collections.defaultdict(dict)

    def add(self, tenant_id: str, **deltas: float) -> None:
        for name, value in deltas.items():
            if value is None:
                continue
            if name in PEAK_COUNTERS:
                peaks = self._peaks[tenant_id]
                peaks[name] = max(peaks.get(name, 0), value)
            else:
                self._pending[tenant_id][name] += value

    async def flush(self) -> None:
        pending, self._pending = self._pending, collections.defaultdict(collections.Counter)
        peaks, self._peaks = self._peaks, collections.defaultdict(dict)
        for tenant_id in set(pending) | set(peaks):
            await self.store.add_usage(tenant_id, dict(pending.get(tenant_id, {})), peaks.get(tenant_id, {}))

    async def totals(self, tenant_id: str) -> dict[str, float]:
        totals = {name: 0.0 for name in USAGE_COUNTERS}
        totals.update(await self.store.usage(tenant_id))
        for name, value in self._pending.get(tenant_id, {}).items():
            totals[name] = totals.get(name, 0) + value
        for name, value in self._peaks.get(tenant_id, {}).items():
            totals[name] = max(totals.get(name, 0), value)
        return totals


class LatencyWindow:
    """Execution latencies of the last few minutes, for percentiles."""

    def __init__(self, window_s: float = 900, size: int = 10_000) -> None:
        self.window_s = window_s
        self._samples: collections.deque[tuple[float, float]] = collections.deque(maxlen=size)

    def add(self, latency_ms: float) -> None:
        self._samples.append((time.monotonic(), latency_ms))

    def percentiles(self) -> dict[str, float | None]:
        cutoff = time.monotonic() - self.window_s
        values = sorted(ms for at, ms in self._samples if at >= cutoff)
        if not values:
            return {"p50": None, "p95": None, "p99": None, "count": 0}
        pick = lambda q: round(values[min(len(values) - 1, int(q * len(values)))], 3)
        return {"p50": pick(0.5), "p95": pick(0.95), "p99": pick(0.99), "count": len(values)}


class Prometheus:
    """Operator metrics; each server has its own registry (tests run several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Histogram(
            "cellbox_http_request_duration_seconds", "HTTP request latency by route",
            ["method", "route", "status"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.executions = Counter("cellbox_executions_total", "Code executions", ["language"], registry=self.registry)
        self.cells = Gauge("cellbox_cells", "Cells by state", ["state"], registry=self.registry)
        self.errors = Counter("cellbox_http_errors_total", "Answers with status >= 500", registry=self.registry)
        self.server_errors = 0


class RequestMetrics:
    """ASGI middleware: latency per route template (never per cell id), and 5xx counts."""

    def __init__(self, app: Any, prometheus: Prometheus) -> None:
        self.app = app
        self.prometheus = prometheus

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.prometheus.requests.labels(scope["method"], path, str(status)).observe(time.perf_counter() - started)
            if status >= 500:
                self.prometheus.server_errors += 1
                self.prometheus.errors.inc()


def host_figures() -> dict[str, Any]:
    load1, load5, load15 = os.getloadavg()
    meminfo = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                name, _, rest = line.partition(":")
                meminfo[name] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return {
        "load": [round(load1, 2), round(load5, 2), round(load15, 2)],
        "cpus": os.cpu_count(),
        "memory_total_bytes": meminfo.get("MemTotal"),
        "memory_available_bytes": meminfo.get("MemAvailable"),
    }


class Meters:
    """Everything the server measures, in one object handed to whoever records."""

    def __init__(self, store: Any, prometheus: Prometheus | None = None) -> None:
        self.usage = Usage(store)
        self.latency: dict[str, LatencyWindow] = collections.defaultdict(LatencyWindow)
        self.prometheus = prometheus or Prometheus()

    def execution(self, tenant_id: str, language: str, latency_ms: float) -> None:
        self.usage.add(tenant_id, executions=1)
        self.latency[tenant_id].add(latency_ms)
        self.prometheus.executions.labels(language).inc()
