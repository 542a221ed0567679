"""Usage metrics, dashboard stats, and Prometheus metrics for operators."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..cells.state import CellState
from ..metrics import host_figures
from ..runtime import cgroups
from .cells import manager
from .deps import tenant
from .schemas import CellMetrics, ErrorBody, StatsResponse, UsageResponse

router = APIRouter(tags=["system"], responses={404: {"model": ErrorBody}})


def _live_of(request: Request, tenant_id: str) -> list:
    return [live for live in manager(request).live.values() if live.record.tenant_id == tenant_id]


@router.get("/v1/metrics", response_model=UsageResponse)
async def usage(request: Request, tenant_id: str = Depends(tenant)) -> UsageResponse:
    """The caller's usage: totals since its first cell, plus what its live cells use now."""
    state = request.app.state
    totals = await state.usage.totals(tenant_id)
    now = time.time()
    running = paused = 0
    live_cpu = live_seconds = 0.0
    live_peak = 0
    for live in _live_of(request, tenant_id):
        record = live.record
        running += record.state == CellState.RUNNING.value
        paused += record.state == CellState.PAUSED.value
        live_seconds += now - record.started_at
        figures = cgroups.usage(record.id)
        live_cpu += figures["cpu_seconds"] or 0.0
        live_peak = max(live_peak, figures["memory_peak_bytes"] or 0)
    return UsageResponse(
        cells_created=int(totals["cells_created"]),
        cells_running=running,
        cells_paused=paused,
        cell_seconds=round(totals["cell_seconds"] + live_seconds, 3),
        executions=int(totals["executions"]),
        commands=int(totals["commands"]),
        cpu_seconds=round(totals["cpu_seconds"] + live_cpu, 3),
        memory_peak_bytes=int(max(totals["memory_peak_bytes"], live_peak)),
        snapshot_bytes=await state.store.snapshot_bytes(tenant_id),
        fetches=int(totals["fetches"]),
        fetch_bytes=int(totals["fetch_bytes"]),
    )


@router.get("/v1/cells/{cell_id}/metrics", response_model=CellMetrics)
async def cell_metrics(request: Request, cell_id: str, tenant_id: str = Depends(tenant)) -> CellMetrics:
    """One cell's current use, from its cgroup and its disk (null where unknown)."""
    cells = manager(request)
    record = await cells.get(tenant_id, cell_id)
    figures = cgroups.usage(cell_id) if cell_id in cells.live else {}
    disk = cgroups.disk_used(request.app.state.runtime.cell_dir(cell_id) / "disk") if cell_id in cells.live else None
    return CellMetrics(
        cell_id=cell_id,
        state=record.state,
        cpu_seconds=figures.get("cpu_seconds"),
        memory_bytes=figures.get("memory_bytes"),
        memory_peak_bytes=figures.get("memory_peak_bytes"),
        disk_bytes=disk,
        pids=figures.get("pids"),
        executions=record.executions,
    )


@router.get("/v1/stats", response_model=StatsResponse)
async def stats(request: Request, tenant_id: str = Depends(tenant)) -> StatsResponse:
    """What a dashboard shows for the caller, plus the host's load."""
    state = request.app.state
    store = state.store
    now = time.time()
    midnight = now - now % 86400
    lives = _live_of(request, tenant_id)
    window = state.latency.get(tenant_id)
    return StatsResponse(
        running=sum(l.record.state == CellState.RUNNING.value for l in lives),
        paused=sum(l.record.state == CellState.PAUSED.value for l in lives),
        killed_today=await store.count_cells(tenant_id, ended_after=midnight),
        created_last_hour=await store.count_cells(tenant_id, created_after=now - 3600),
        created_last_day=await store.count_cells(tenant_id, created_after=now - 86400),
        exec_latency_ms=window.percentiles() if window else {"p50": None, "p95": None, "p99": None, "count": 0},
        server_errors=state.prometheus.server_errors,
        pool={"ready": len(manager(request).pool.ready), "target": manager(request).pool.size},
        host=host_figures(),
    )


@router.get("/metrics", response_class=PlainTextResponse, include_in_schema=False)
async def prometheus(request: Request) -> PlainTextResponse:
    """Prometheus text format: request latency per route, executions, cells by state."""
    state = request.app.state
    counts = {s.value: 0 for s in CellState}
    for live in manager(request).live.values():
        counts[live.record.state] += 1
    for name, value in counts.items():
        state.prometheus.cells.labels(name).set(value)
    return PlainTextResponse(generate_latest(state.prometheus.registry), media_type=CONTENT_TYPE_LATEST)
