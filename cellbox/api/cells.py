"""Cells: create, read, list, kill, and their lifetime, metadata and envs."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import overload
from urllib.parse import unquote

from fastapi import APIRouter, Body, Depends, Query, Request, Response

from ..agent import VERSION as AGENT_VERSION
from ..cells.manager import CellManager
from ..cells.state import CellState
from ..errors import bad_request
from ..store import Cell, decode_cursor, encode_cursor
from .deps import tenant
from .schemas import (
    CellInfo,
    CreateCellRequest,
    ErrorBody,
    MetadataResponse,
    RunningResponse,
    EnvMap,
    StringMap,
    TimeoutRequest,
)

router = APIRouter(prefix="/v1/cells", tags=["cells"], responses={404: {"model": ErrorBody}})

MAX_PAGE = 1000


def manager(request: Request) -> CellManager:
    return request.app.state.cells


@overload
def iso(ts: float) -> str: ...
@overload
def iso(ts: None) -> None: ...
def iso(ts: float | None) -> str | None:
    """A time as the API shows it: ISO 8601 in UTC, with the timezone."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat() if ts is not None else None


def cell_info(cell: Cell) -> CellInfo:
    killed = cell.state == CellState.KILLED.value
    end = cell.ended_at if killed and cell.ended_at else cell.last_activity + cell.timeout_s
    limits = cell.limits
    return CellInfo(
        cell_id=cell.id,
        template=cell.template,
        created_at=int(cell.created_at * 1000),
        timeout_ms=int(cell.timeout_s * 1000),
        status=cell.state,
        persistent=cell.persistent,
        volume_id=None,
        executions=cell.executions,
        metadata=cell.cell_metadata,
        sandbox_id=cell.id,
        template_id=cell.template,
        started_at=iso(cell.started_at),
        end_at=iso(end),
        state=cell.state,  # type: ignore[arg-type]
        # The client reads a whole number; ``cpus`` has the exact share.
        cpu_count=max(1, math.ceil(limits["cpu_count"])),
        cpus=limits["cpu_count"],
        memory_mb=limits["memory_mb"],
        disk_mb=limits["disk_mb"],
        envd_version=AGENT_VERSION,
        name=cell.name,
        allow_internet_access=cell.allow_internet_access,
        network=cell.network,
        lifecycle=cell.lifecycle,
        volume_mounts=[],
        timeout=cell.timeout_s,
        last_activity_at=iso(cell.last_activity),
        ended_at=iso(cell.ended_at),
        end_reason=cell.end_reason,
    )


@router.post("", response_model=CellInfo, status_code=201)
async def create_cell(
    request: Request,
    body: CreateCellRequest | None = Body(None),
    tenant_id: str = Depends(tenant),
) -> CellInfo:
    cell = await manager(request).create(tenant_id, body or CreateCellRequest())
    return cell_info(cell)


def _parse_metadata_filter(raw: str) -> dict[str, str]:
    """``k=v,k2=v2`` with keys and values URL-encoded (as the published client sends them)."""
    wanted = {}
    for pair in filter(None, raw.split(",")):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise bad_request(f"metadata filter {pair!r} is not key=value")
        wanted[unquote(key)] = unquote(value)
    return wanted


@router.get("", response_model=list[CellInfo], responses={200: {"headers": {"X-Next-Token": {
    "description": "Pass as next_token for the next page; absent on the last page.", "schema": {"type": "string"},
}}}})
async def list_cells(
    request: Request,
    response: Response,
    limit: int = Query(100, ge=1, le=MAX_PAGE),
    next_token: str | None = Query(None),
    metadata: str | None = Query(None, description="k=v pairs joined by commas; all must match."),
    state: str | None = Query(None, description="Comma list of running, paused, killed."),
    tenant_id: str = Depends(tenant),
) -> list[CellInfo]:
    states = [s.strip() for s in state.split(",") if s.strip()] if state else ["running", "paused"]
    valid = {s.value for s in CellState}
    unknown = [s for s in states if s not in valid]
    if unknown:
        raise bad_request(f"unknown state {unknown[0]!r}; use running, paused or killed")
    after = None
    if next_token:
        try:
            after = decode_cursor(next_token)
        except (ValueError, UnicodeDecodeError):
            raise bad_request("next_token is not a token this server issued")
    filters = _parse_metadata_filter(metadata) if metadata else {}
    cells = await request.app.state.store.list_cells(tenant_id, states, filters, limit + 1, after)
    if len(cells) > limit:
        cells = cells[:limit]
        response.headers["X-Next-Token"] = encode_cursor(cells[-1].created_at, cells[-1].id)
    live = manager(request).live
    return [cell_info(live[c.id].record if c.id in live else c) for c in cells]


@router.get("/{cell_id}", response_model=CellInfo)
async def get_cell(request: Request, cell_id: str, tenant_id: str = Depends(tenant)) -> CellInfo:
    return cell_info(await manager(request).get(tenant_id, cell_id, activity=True))


@router.delete("/{cell_id}", response_model=CellInfo)
async def kill_cell(request: Request, cell_id: str, tenant_id: str = Depends(tenant)) -> CellInfo:
    return cell_info(await manager(request).kill(tenant_id, cell_id))


@router.put("/{cell_id}/timeout", response_model=CellInfo)
async def set_timeout(
    request: Request, cell_id: str, body: TimeoutRequest, tenant_id: str = Depends(tenant)
) -> CellInfo:
    return cell_info(await manager(request).set_timeout(tenant_id, cell_id, body.timeout))


@router.post("/{cell_id}/refresh", response_model=CellInfo)
async def refresh(request: Request, cell_id: str, tenant_id: str = Depends(tenant)) -> CellInfo:
    return cell_info(await manager(request).refresh(tenant_id, cell_id))


@router.get("/{cell_id}/is_running", response_model=RunningResponse)
async def is_running(request: Request, cell_id: str, tenant_id: str = Depends(tenant)) -> RunningResponse:
    cell = await manager(request).get(tenant_id, cell_id, activity=True)
    return RunningResponse(running=cell.state == CellState.RUNNING.value)


@router.patch("/{cell_id}/metadata", response_model=MetadataResponse)
async def patch_metadata(
    request: Request, cell_id: str, body: StringMap | None = Body(None), tenant_id: str = Depends(tenant)
) -> MetadataResponse:
    """Merge keys into the metadata; an empty or missing body changes nothing."""
    merged = await manager(request).patch_map(tenant_id, cell_id, "cell_metadata", body or {})
    return MetadataResponse(metadata=merged)


@router.get("/{cell_id}/envs", response_model=dict[str, str])
async def get_envs(request: Request, cell_id: str, tenant_id: str = Depends(tenant)) -> dict[str, str]:
    return (await manager(request).get(tenant_id, cell_id, activity=True)).envs


@router.patch("/{cell_id}/envs", response_model=dict[str, str])
async def patch_envs(
    request: Request, cell_id: str, body: EnvMap | None = Body(None), tenant_id: str = Depends(tenant)
) -> dict[str, str]:
    """New values apply to commands and executions started after this call; an empty or
    missing body changes nothing."""
    return await manager(request).patch_map(tenant_id, cell_id, "envs", body or {})
