"""Files in a cell, served by its agent. Paths resolve inside the cell:
relative ones under /data, absolute ones from the cell's root, never the host's."""

from __future__ import annotations

import posixpath
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from .cells import manager
from .deps import tenant
from .schemas import EntryInfo, ErrorBody, ExistsResponse, FileContent, FileList, MkdirRequest, RenameRequest, WriteFileRequest
from .streams import held_open, open_sse

router = APIRouter(prefix="/v1/cells", tags=["files"], responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}})

PathQuery = Query(..., description="Relative to /data, or absolute inside the cell.")


async def _call(request: Request, tenant_id: str, cell_id: str, method: str, path: str, **kwargs) -> dict:
    return await manager(request).call_agent(tenant_id, cell_id, method, path, **kwargs)


@router.post("/{cell_id}/files", response_model=EntryInfo)
async def write_file(request: Request, cell_id: str, body: WriteFileRequest, tenant_id: str = Depends(tenant)) -> dict:
    """Write a file (parents created). ``encoding: "base64"`` for binary content."""
    return await _call(request, tenant_id, cell_id, "POST", "/files", json=body.model_dump(exclude_none=True))


@router.get("/{cell_id}/files", response_model=FileContent)
async def read_file(
    request: Request, cell_id: str, path: str = PathQuery,
    encoding: str | None = Query(None, description="base64 to read binary content"),
    tenant_id: str = Depends(tenant),
) -> dict:
    # Without an encoding, a client reads ``content`` as the file's text: ask the agent for
    # text, which refuses a binary file rather than hand over silently different data.
    params = {"path": path, "encoding": encoding or "utf-8"}
    return await _call(request, tenant_id, cell_id, "GET", "/files", params=params)


@router.delete("/{cell_id}/files", response_model=dict)
async def remove(request: Request, cell_id: str, path: str = PathQuery, tenant_id: str = Depends(tenant)) -> dict:
    """Remove a file or a whole directory tree."""
    return await _call(request, tenant_id, cell_id, "DELETE", "/files", params={"path": path})


@router.get("/{cell_id}/files/list", response_model=FileList)
async def list_dir(
    request: Request, cell_id: str, path: str = Query("", description="Directory; default /data"),
    depth: int = Query(1, ge=1, le=32), tenant_id: str = Depends(tenant),
) -> dict:
    return await _call(request, tenant_id, cell_id, "GET", "/files/list", params={"path": path, "depth": depth})


@router.get("/{cell_id}/files/exists", response_model=ExistsResponse)
async def exists(request: Request, cell_id: str, path: str = PathQuery, tenant_id: str = Depends(tenant)) -> dict:
    return await _call(request, tenant_id, cell_id, "GET", "/files/exists", params={"path": path})


@router.get("/{cell_id}/files/info", response_model=EntryInfo)
async def info(request: Request, cell_id: str, path: str = PathQuery, tenant_id: str = Depends(tenant)) -> dict:
    return await _call(request, tenant_id, cell_id, "GET", "/files/info", params={"path": path})


@router.post("/{cell_id}/files/mkdir", response_model=EntryInfo)
async def mkdir(request: Request, cell_id: str, body: MkdirRequest, tenant_id: str = Depends(tenant)) -> dict:
    return await _call(request, tenant_id, cell_id, "POST", "/files/mkdir", json=body.model_dump())


@router.post("/{cell_id}/files/rename", response_model=EntryInfo)
async def rename(request: Request, cell_id: str, body: RenameRequest, tenant_id: str = Depends(tenant)) -> dict:
    return await _call(request, tenant_id, cell_id, "POST", "/files/rename", json=body.model_dump())


@router.post(
    "/{cell_id}/files/upload", response_model=EntryInfo,
    openapi_extra={"requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}},
)
async def upload(request: Request, cell_id: str, path: str = PathQuery, tenant_id: str = Depends(tenant)) -> dict:
    """Raw bytes in, streamed to the cell's disk (not held in memory); bounded by the cell's disk."""
    cells = manager(request)
    live = await cells.running(tenant_id, cell_id)
    async with cells.activity(live):
        return await live.agent.request(
            "PUT", "/files/raw", params={"path": path}, content=request.stream(), timeout=None,
            headers={"content-type": "application/octet-stream"},
        )


@router.get(
    "/{cell_id}/files/download",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The file's bytes."}},
)
async def download(request: Request, cell_id: str, path: str = PathQuery, tenant_id: str = Depends(tenant)) -> StreamingResponse:
    """The file's bytes, streamed, with its length."""
    cells = manager(request)
    live = await cells.running(tenant_id, cell_id)
    context = live.agent.stream("GET", "/files/raw", params={"path": path})
    response = await context.__aenter__()
    name = posixpath.basename(path.rstrip("/")) or "download"
    headers = {"content-disposition": f"attachment; filename*=UTF-8''{quote(name, safe='')}"}
    if "content-length" in response.headers:
        headers["content-length"] = response.headers["content-length"]
    body = held_open(cells, live, context, response.body)
    return StreamingResponse(body, media_type="application/octet-stream", headers=headers)


@router.get("/{cell_id}/files/watch", response_class=StreamingResponse)
async def watch(
    request: Request, cell_id: str, path: str = Query("", description="Directory to watch; default /data"),
    recursive: bool = Query(False), tenant_id: str = Depends(tenant),
) -> StreamingResponse:
    """Server-sent events for changes under a path: ready (once watching), then
    created, modified, deleted and renamed, until the client disconnects."""
    cells = manager(request)
    live = await cells.running(tenant_id, cell_id)
    return await open_sse(cells, live, "/files/watch", {"path": path, "recursive": str(recursive).lower()})

