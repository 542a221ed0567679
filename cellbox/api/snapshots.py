"""Pause, resume and snapshots of a cell."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from ..store import Snapshot
from .cells import cell_info, iso, manager
from .deps import tenant
from .schemas import ErrorBody, PauseResponse, ResumeResponse, SnapshotManifest

router = APIRouter(prefix="/v1/cells", tags=["pause and snapshots"], responses={404: {"model": ErrorBody}, 409: {"model": ErrorBody}})


def manifest(snapshot: Snapshot) -> SnapshotManifest:
    return SnapshotManifest(
        snapshot_id=snapshot.id,
        cell_id=snapshot.cell_id,
        created_at=iso(snapshot.created_at),
        created_at_ms=int(snapshot.created_at * 1000),
        size_bytes=snapshot.size_bytes,
        digest=snapshot.digest,
        reason=snapshot.reason,
    )


@router.post("/{cell_id}/pause", response_model=PauseResponse)
async def pause(request: Request, cell_id: str, tenant_id: str = Depends(tenant)) -> PauseResponse:
    """Freeze every process (no CPU while paused) and snapshot the disk. Either the
    pause completes or the cell stays running; it waits (up to 30 s) for executions
    and commands in flight."""
    snapshot = await manager(request).pause(tenant_id, cell_id)
    return PauseResponse(snapshot_id=snapshot.id, snapshot=manifest(snapshot))


@router.post("/{cell_id}/resume", response_model=ResumeResponse)
async def resume(request: Request, cell_id: str, tenant_id: str = Depends(tenant)) -> ResumeResponse:
    """Thaw the same processes, or, once the container was let go (after a long pause
    or a host restart), start from the latest snapshot: ``restored`` says what came back."""
    cells = manager(request)
    restored = await cells.resume(tenant_id, cell_id)
    return ResumeResponse(restored=restored, cell=cell_info(await cells.get(tenant_id, cell_id)))


@router.get("/{cell_id}/snapshots", response_model=list[SnapshotManifest])
async def list_snapshots(request: Request, cell_id: str, tenant_id: str = Depends(tenant)) -> list[SnapshotManifest]:
    return [manifest(s) for s in await manager(request).list_snapshots(tenant_id, cell_id)]


@router.post("/{cell_id}/snapshots", response_model=SnapshotManifest)
async def take_snapshot(request: Request, cell_id: str, tenant_id: str = Depends(tenant)) -> SnapshotManifest:
    """A restore point; the cell is frozen only while its disk is archived."""
    return manifest(await manager(request).take_snapshot(tenant_id, cell_id))


@router.delete("/{cell_id}/snapshots/{snapshot_id}", status_code=204)
async def delete_snapshot(request: Request, cell_id: str, snapshot_id: str, tenant_id: str = Depends(tenant)) -> None:
    await manager(request).delete_snapshot(tenant_id, cell_id, snapshot_id)
