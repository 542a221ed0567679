"""Background processes in a cell: list, poll, signal, feed stdin, follow output.

``/processes/{id}`` and the older client's ``/commands/{id}`` answer the same objects.
"""

from __future__ import annotations

import re

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from ..errors import ApiError
from .cells import manager
from .deps import tenant
from .schemas import ErrorBody, KillRequest, ProcessInfo, StdinRequest
from .streams import open_sse

router = APIRouter(prefix="/v1/cells", tags=["processes"], responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}})


_COMMAND_ID = re.compile(r"cmd_[0-9a-f]{12}")


def _check_id(request: Request) -> None:
    """Only ids the agent could have made reach it (and a URL it can parse)."""
    command_id = request.path_params.get("command_id")
    if command_id is not None and not _COMMAND_ID.fullmatch(command_id):
        raise ApiError(404, f"process {command_id!r} not found in cell {request.path_params['cell_id']!r}", "not_found")


async def _call(request: Request, tenant_id: str, cell_id: str, method: str, path: str, **kwargs) -> dict:
    _check_id(request)
    return await manager(request).call_agent(tenant_id, cell_id, method, path, **kwargs)


@router.get("/{cell_id}/processes", response_model=list[ProcessInfo])
async def list_processes(request: Request, cell_id: str, tenant_id: str = Depends(tenant)) -> list[dict]:
    """Running and finished processes (the most recent 200 finished are kept), without
    their output: read one process for that."""
    return (await _call(request, tenant_id, cell_id, "GET", "/processes", params={"output": "false"}))["processes"]


@router.get("/{cell_id}/processes/{command_id}", response_model=ProcessInfo)
@router.get("/{cell_id}/commands/{command_id}", response_model=ProcessInfo, summary="Get Process (the older client's path)")
async def get_process(request: Request, cell_id: str, command_id: str, tenant_id: str = Depends(tenant)) -> dict:
    """Status, exit code (null while running) and the output so far (the last MiB of each stream)."""
    return await _call(request, tenant_id, cell_id, "GET", f"/processes/{command_id}")


@router.post("/{cell_id}/processes/{command_id}/kill", response_model=ProcessInfo)
async def kill_process(
    request: Request, cell_id: str, command_id: str, body: KillRequest | None = None, tenant_id: str = Depends(tenant),
) -> dict:
    """Signal the process's whole group (default SIGKILL)."""
    payload = {"signal": body.signal} if body and body.signal is not None else {}
    return await _call(request, tenant_id, cell_id, "POST", f"/processes/{command_id}/kill", json=payload)


@router.delete("/{cell_id}/commands/{command_id}", response_model=ProcessInfo, summary="Delete Process (the older client's path)")
@router.delete("/{cell_id}/processes/{command_id}", response_model=ProcessInfo)
async def delete_process(request: Request, cell_id: str, command_id: str, tenant_id: str = Depends(tenant)) -> dict:
    """Kill with SIGKILL (the older client's verb)."""
    return await _call(request, tenant_id, cell_id, "DELETE", f"/processes/{command_id}")


@router.post("/{cell_id}/processes/{command_id}/stdin", response_model=ProcessInfo)
async def send_stdin(
    request: Request, cell_id: str, command_id: str, body: StdinRequest, tenant_id: str = Depends(tenant),
) -> dict:
    return await _call(request, tenant_id, cell_id, "POST", f"/processes/{command_id}/stdin", json=body.model_dump())


@router.get("/{cell_id}/processes/{command_id}/stream", response_class=StreamingResponse)
async def stream_process(
    request: Request, cell_id: str, command_id: str,
    offset_stdout: int = Query(0, ge=0), offset_stderr: int = Query(0, ge=0),
    tenant_id: str = Depends(tenant),
) -> StreamingResponse:
    """Server-sent events: stdout/stderr chunks (with byte offsets) live, then exit."""
    _check_id(request)
    cells = manager(request)
    live = await cells.running(tenant_id, cell_id)
    params = {"offset_stdout": offset_stdout, "offset_stderr": offset_stderr}
    return await open_sse(cells, live, f"/processes/{command_id}/stream", params)
