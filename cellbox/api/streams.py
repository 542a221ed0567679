"""Relaying the agent's NDJSON streams to clients as server-sent events."""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

from fastapi.responses import StreamingResponse

from ..cells.manager import CellManager, LiveCell

HEARTBEAT_S = 5.0
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def open_sse(cells: CellManager, live: LiveCell, agent_path: str, params: dict[str, Any]) -> StreamingResponse:
    """Follow an agent stream as SSE, with heartbeats while it is quiet.

    The agent's answer is checked before the response starts, so a bad path is an
    ordinary error answer, not a broken stream. An open stream is activity: the
    cell does not time out while a client follows it.
    """
    context = live.agent.stream_lines("GET", agent_path, params=params)
    lines = await context.__aenter__()

    async def frames() -> AsyncIterator[str]:
        pending: asyncio.Future | None = None
        try:
            async with cells.activity(live, stream=True):
                iterator = lines.__aiter__()
                while True:
                    pending = asyncio.ensure_future(iterator.__anext__())
                    done, _ = await asyncio.wait({pending}, timeout=HEARTBEAT_S)
                    while not done:
                        yield ": keep-alive\n\n"
                        done, _ = await asyncio.wait({pending}, timeout=HEARTBEAT_S)
                    try:
                        event = pending.result()
                    except StopAsyncIteration:
                        return
                    yield f"data: {json.dumps(event)}\n\n"
        finally:
            if pending is not None and not pending.done():
                pending.cancel()
            await context.__aexit__(None, None, None)

    return StreamingResponse(frames(), media_type="text/event-stream", headers=SSE_HEADERS)
