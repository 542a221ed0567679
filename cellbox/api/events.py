"""Events: ``GET /v1/events``, ``GET /v1/cells/{id}/events`` and the live ``GET /v1/events/stream``."""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from ..errors import bad_request
from ..events import event_body, invalid_type_patterns
from ..events.bus import Subscription
from .cells import manager
from .deps import tenant
from .schemas import ErrorBody

router = APIRouter(tags=["events"], responses={404: {"model": ErrorBody}})

MAX_EVENTS = 100


class EventOut(BaseModel):
    id: str = Field(description="Sortable: a later event has a greater id. Use it as `since`.")
    type: str = Field(description="cell.created, cell.paused, cell.resumed, cell.timeout, cell.killed, ...")
    cell_id: str | None
    timestamp: str = Field(description="ISO 8601, UTC.")
    timestamp_ms: int = Field(description="Milliseconds since the epoch.")
    data: dict[str, Any]


def type_filter(raw: str | None) -> list[str] | None:
    """``type=cell.killed,template.*`` → the patterns; unknown types are an error, not an empty list."""
    if not raw:
        return None
    patterns = [p.strip() for p in raw.split(",") if p.strip()]
    invalid = invalid_type_patterns(patterns)
    if invalid:
        raise bad_request(f"unknown event type {invalid[0]!r}; use a type such as cell.killed, a prefix such as cell.*, or *")
    return patterns


_TYPE_QUERY = Query(None, description="Comma list of types or prefixes (cell.killed,template.*).")
_SINCE_QUERY = Query(None, description="An event id: only events after it (the oldest first `limit` of them).")


@router.get("/v1/events", response_model=list[EventOut])
async def list_events(
    request: Request,
    limit: int = Query(MAX_EVENTS, ge=1, le=MAX_EVENTS),
    type: str | None = _TYPE_QUERY,
    since: str | None = _SINCE_QUERY,
    before: str | None = Query(None, description="An event id: only events before it (to page back)."),
    tenant_id: str = Depends(tenant),
) -> list[dict]:
    """The caller's events, newest first."""
    events = await request.app.state.store.list_events(
        tenant_id, types=type_filter(type), since=since, before=before, limit=limit
    )
    return [event_body(e) for e in events]


@router.get("/v1/cells/{cell_id}/events", response_model=list[EventOut])
async def cell_events(
    request: Request,
    cell_id: str,
    limit: int = Query(MAX_EVENTS, ge=1, le=MAX_EVENTS),
    type: str | None = _TYPE_QUERY,
    since: str | None = _SINCE_QUERY,
    tenant_id: str = Depends(tenant),
) -> list[dict]:
    """One cell's events, newest first; a killed cell's too, while its record is kept."""
    await manager(request).get(tenant_id, cell_id)
    events = await request.app.state.store.list_events(
        tenant_id, cell_id=cell_id, types=type_filter(type), since=since, limit=limit
    )
    return [event_body(e) for e in events]


def _sse(event: dict) -> str:
    return f"id: {event['id']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n"


@router.get(
    "/v1/events/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-sent events."}},
)
async def stream_events(
    request: Request,
    type: str | None = _TYPE_QUERY,
    cell_id: str | None = Query(None, description="Only this cell's events."),
    last_event_id: str | None = Header(None, description="Resume: events after this id are sent first."),
    tenant_id: str = Depends(tenant),
) -> StreamingResponse:
    """The caller's events as they happen: `data: <event JSON>` per event, comments as heartbeats.

    Resuming with `Last-Event-ID` replays up to 100 stored events first. A client
    that reads too slowly is dropped (the stream ends) rather than slowing the server.
    """
    types = type_filter(type)
    state = request.app.state
    # Subscribed before answering: every event after the first byte reaches this stream.
    subscription = state.events.bus.subscribe(tenant_id, types, cell_id)
    replay = []
    if last_event_id:
        replay = await state.store.list_events(
            tenant_id, cell_id=cell_id, types=types, since=last_event_id, limit=MAX_EVENTS
        )
    return StreamingResponse(
        _stream(state, subscription, [event_body(e) for e in reversed(replay)], state.config.events_heartbeat_s),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _stream(state: Any, subscription: Subscription, replay: list[dict], heartbeat_s: float) -> AsyncIterator[str]:
    try:
        yield ": connected\n\n"
        last = None
        for event in replay:
            last = event["id"]
            yield _sse(event)
        while True:
            try:
                event = await asyncio.wait_for(subscription.queue.get(), heartbeat_s)
            except TimeoutError:
                yield ": heartbeat\n\n"
                continue
            if "_end" in event:
                yield f": {event['_end']}\n\n"
                return
            if last is not None and event["id"] <= last:
                continue  # already sent in the replay
            yield _sse(event)
    finally:
        state.events.bus.unsubscribe(subscription)
