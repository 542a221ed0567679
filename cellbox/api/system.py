"""Health: open and cheap."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request

from .. import __version__
from .schemas import HealthResponse

router = APIRouter(tags=["system"])


@router.get("/v1/health", response_model=HealthResponse)
@router.get("/health", response_model=HealthResponse, include_in_schema=False)
async def health(request: Request) -> HealthResponse:
    """Whether the store and the runtime answer; ``degraded`` when one does not."""
    state = request.app.state
    store_ok = await state.store.ping()
    runtime_ok = await state.runtime.ping()
    return HealthResponse(
        status="ok" if store_ok and runtime_ok else "degraded",
        version=__version__,
        uptime_s=round(time.monotonic() - state.started, 3),
        runtime={"name": state.runtime.name, "ok": runtime_ok, "cells": len(state.cells.live)},
        store={"ok": store_ok},
    )
