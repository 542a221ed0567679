"""Streaming answers: server-sent events, and agent streams held open for a client."""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncContextManager, AsyncIterator, TypeVar

from fastapi.responses import StreamingResponse

from ..cells.manager import CellManager, LiveCell

T = TypeVar("T")

HEARTBEAT_S = 5.0
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_response(events: AsyncIterator[dict | None]) -> StreamingResponse:
    """``data: <json>`` per event; None becomes a comment that keeps the connection alive."""

    async def frames() -> AsyncIterator[str]:
        async for event in events:
            yield ": keep-alive\n\n" if event is None else f"data: {json.dumps(event)}\n\n"

    return StreamingResponse(frames(), media_type="text/event-stream", headers=SSE_HEADERS)


async def with_heartbeats(items: AsyncIterator[T], every: float = HEARTBEAT_S) -> AsyncIterator[T | None]:
    """The items as they come, and None whenever ``every`` seconds pass without one."""
    iterator = items.__aiter__()
    pending: asyncio.Future | None = None
    try:
        while True:
            pending = asyncio.ensure_future(iterator.__anext__())
            while not (await asyncio.wait({pending}, timeout=every))[0]:
                yield None
            try:
                item = pending.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if pending is not None and not pending.done():
            pending.cancel()


async def held_open(
    cells: CellManager, live: LiveCell, context: AsyncContextManager[Any], items: AsyncIterator[T]
) -> AsyncIterator[T]:
    """Relay an opened agent stream to a client, closing it when either side is done.

    An open stream is activity: the cell does not time out while a client follows it.
    """
    try:
        async with cells.activity(live, stream=True):
            async for item in items:
                yield item
    finally:
        await context.__aexit__(None, None, None)


async def open_sse(cells: CellManager, live: LiveCell, agent_path: str, params: dict[str, Any]) -> StreamingResponse:
    """Follow an agent's NDJSON stream as SSE, with heartbeats while it is quiet.

    The agent's answer is checked before the response starts, so a bad path is an
    ordinary error answer, not a broken stream.
    """
    context = live.agent.stream_lines("GET", agent_path, params=params)
    lines = await context.__aenter__()
    return sse_response(held_open(cells, live, context, with_heartbeats(lines)))
