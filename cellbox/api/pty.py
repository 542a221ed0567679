"""The terminal: a WebSocket bridged to the agent's pty connection.

Client side (the contract): first a text message ``{"type":"connected","pid":N}``,
then binary frames carry raw terminal bytes both ways, and text frames carry
``{"type":"resize","cols","rows"}`` or ``{"type":"kill"}``. Agent side: an upgraded
unix-socket connection of ``type(1) | length(4, big-endian) | payload`` frames,
type 0 for terminal bytes and 1 for JSON control messages.
"""

from __future__ import annotations

import asyncio
import json
import struct
from urllib.parse import urlencode

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect

from ..errors import ApiError
from .cells import manager

router = APIRouter(tags=["terminal"])

_HEADER = struct.Struct(">BI")
_DATA, _CONTROL = 0, 1
_MAX_HEAD = 64 * 1024
# The agent's frames are at most 1 MiB; a larger length means a broken or hostile agent.
_MAX_FRAME = 1024 * 1024
# WebSocket close codes for refusals before the session starts (4000 + HTTP status).
_POLICY = 1008


async def _open_agent_pty(socket_path: str, query: dict) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(socket_path)
    writer.write(
        f"GET /pty?{urlencode(query)} HTTP/1.1\r\nHost: cell-agent\r\n"
        "Connection: Upgrade\r\nUpgrade: cellbox-pty\r\n\r\n".encode()
    )
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, _, rest = head.decode("latin-1").partition("\r\n")
    status = int(status_line.split()[1])
    if status != 101:
        headers = dict(
            line.split(":", 1) for line in rest.split("\r\n") if ":" in line
        )
        length = int(headers.get("content-length", headers.get("Content-Length", "0")).strip() or 0)
        body = await reader.readexactly(min(length, _MAX_HEAD)) if length else b"{}"
        writer.close()
        try:
            error = json.loads(body).get("error", f"the agent answered {status}")
        except ValueError:
            error = f"the agent answered {status}"
        raise ApiError(status, error, "pty_refused")
    return reader, writer


async def _agent_to_client(reader: asyncio.StreamReader, websocket: WebSocket) -> None:
    while True:
        kind, length = _HEADER.unpack(await reader.readexactly(_HEADER.size))
        if length > _MAX_FRAME:
            raise ConnectionError(f"the agent sent a terminal frame of {length} bytes")
        payload = await reader.readexactly(length)
        if kind == _DATA:
            await websocket.send_bytes(payload)
        else:
            await websocket.send_text(payload.decode())


async def _client_to_agent(websocket: WebSocket, writer: asyncio.StreamWriter) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("bytes") is not None:
            frame = (_DATA, message["bytes"])
        else:
            frame = (_CONTROL, message.get("text", "").encode())
        writer.write(_HEADER.pack(frame[0], len(frame[1])) + frame[1])
        await writer.drain()


@router.websocket("/v1/cells/{cell_id}/pty")
async def terminal(
    websocket: WebSocket, cell_id: str,
    cols: int = Query(80, ge=1, le=1000), rows: int = Query(24, ge=1, le=1000), cmd: str | None = Query(None),
) -> None:
    """Authenticated like every call: ``Authorization: Bearer <key>`` on the upgrade."""
    state = websocket.app.state
    scheme, _, key = websocket.headers.get("authorization", "").partition(" ")
    tenant_id = await state.keys.tenant_of(key.strip()) if scheme.lower() == "bearer" and key.strip() else None
    if tenant_id is None:
        await websocket.close(code=_POLICY, reason="missing or invalid API key")
        return
    cells = manager(websocket)  # type: ignore[arg-type]
    try:
        live = await cells.running(tenant_id, cell_id)
        query = {"cols": cols, "rows": rows, "envs": json.dumps(live.record.envs), **({"cmd": cmd} if cmd else {})}
        reader, writer = await _open_agent_pty(str(state.runtime.agent_socket(cell_id)), query)
    except ApiError as exc:
        await websocket.close(code=_POLICY, reason=exc.error[:120])
        return
    except OSError as exc:
        await websocket.close(code=1011, reason=f"the cell's agent is unreachable: {exc}"[:120])
        return
    await websocket.accept()
    async with cells.activity(live, stream=True):
        tasks = [
            asyncio.create_task(_agent_to_client(reader, websocket)),
            asyncio.create_task(_client_to_agent(websocket, writer)),
        ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            writer.close()
            try:
                await websocket.close()
            except (RuntimeError, WebSocketDisconnect):
                pass
