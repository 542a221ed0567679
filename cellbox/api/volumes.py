"""Volumes: the published client has calls for them; this server does not offer them yet.

Each call answers 501 with a sentence, so a client gets a clear reason instead of
"no such endpoint".
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from ..errors import ApiError
from .deps import tenant
from .schemas import ErrorBody

router = APIRouter(prefix="/v1/volumes", tags=["volumes"], responses={501: {"model": ErrorBody}})


def _not_available() -> None:
    raise ApiError(
        501,
        "volumes are not available on this server yet: keep data in a cell's files, or take a "
        "snapshot and start new cells from it (POST /v1/cells with snapshot_id)",
        "not_implemented",
    )


@router.get("")
@router.post("")
async def volumes(tenant_id: str = Depends(tenant)) -> None:
    _not_available()


@router.delete("/{volume_id}")
@router.get("/{volume_id}/files")
@router.post("/{volume_id}/files")
async def volume(volume_id: str, tenant_id: str = Depends(tenant)) -> None:
    _not_available()
