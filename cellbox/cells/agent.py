"""The server's side of the agent: HTTP/1.1 over the cell's unix socket, with h11.

Every call to a cell goes through here, executions included, so it is kept lean:
a small pool of kept-alive connections per cell and h11 for the framing (a
general-purpose client cost about a millisecond more per call). Agent errors come
back as ``ApiError`` in the API's error shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import json as jsonlib
from pathlib import Path
from typing import Any, AsyncIterable, AsyncIterator
from urllib.parse import urlencode

import h11

from ..errors import ApiError

_READ_SIZE = 256 * 1024
_MAX_IDLE = 8
# Rich results are capped at 32 MiB by the agent; base64 and JSON framing add to that.
MAX_LINE = 64 * 1024 * 1024
_PARSE_IN_THREAD = 256 * 1024
# A command's answer holds up to 2 × 10 MiB of output, which JSON escaping can grow 6×.
MAX_ANSWER = 160 * 1024 * 1024
CONNECT_TIMEOUT_S = 30.0
Content = bytes | AsyncIterable[bytes] | None


class AgentResponse:
    def __init__(self, status: int, headers: dict[str, str], body: AsyncIterator[bytes]) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    async def read(self, limit: int = MAX_ANSWER) -> bytes:
        chunks, size = [], 0
        async for chunk in self.body:
            size += len(chunk)
            if size > limit:
                raise ApiError(502, "the cell's agent answered more than the server reads at once", "agent_error")
            chunks.append(chunk)
        return b"".join(chunks)


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)

    def usable(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing() and self.h11.our_state is h11.IDLE

    def close(self) -> None:
        self.writer.close()

    async def send(self, event: Any) -> None:
        data = self.h11.send(event)
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def next_event(self) -> Any:
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(await self.reader.read(_READ_SIZE))
                continue
            return event


class AgentClient:
    def __init__(self, socket_path: Path) -> None:
        self.socket_path = str(socket_path)
        self._idle: list[_Connection] = []

    async def _connection(self) -> tuple[_Connection, bool]:
        """A kept-alive connection if one is usable (reused=True), else a new one."""
        while self._idle:
            conn = self._idle.pop()
            if conn.usable():
                return conn, True
            conn.close()
        reader, writer = await asyncio.open_unix_connection(self.socket_path, limit=_READ_SIZE)
        return _Connection(reader, writer), False

    def _release(self, conn: _Connection) -> None:
        if conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
            try:
                conn.h11.start_next_cycle()
            except h11.LocalProtocolError:
                conn.close()
                return
            if len(self._idle) < _MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    async def _send_request(
        self, conn: _Connection, method: str, target: str, content: Content, headers: dict[str, str]
    ) -> None:
        fields = [("host", "cell-agent"), *headers.items()]
        if isinstance(content, (bytes, bytearray)):
            fields.append(("content-length", str(len(content))))
        elif content is not None:
            fields.append(("transfer-encoding", "chunked"))
        else:
            fields.append(("content-length", "0"))
        head = conn.h11.send(h11.Request(method=method, target=target, headers=fields)) or b""
        if content is None or isinstance(content, (bytes, bytearray)):
            # One write for the whole request: this is every execution's path.
            body = conn.h11.send(h11.Data(data=bytes(content))) or b"" if content else b""
            conn.writer.write(head + body + (conn.h11.send(h11.EndOfMessage()) or b""))
            await conn.writer.drain()
            return
        conn.writer.write(head)
        async for chunk in content:
            if chunk:
                await conn.send(h11.Data(data=chunk))
        await conn.send(h11.EndOfMessage())

    @contextlib.asynccontextmanager
    async def open(
        self, method: str, path: str, *, params: dict[str, Any] | None = None, json: Any = None,
        content: Content = None, headers: dict[str, str] | None = None,
    ) -> AsyncIterator[AgentResponse]:
        """Send a request; yield the response with its body still to be read."""
        target = path + ("?" + urlencode({k: v for k, v in params.items() if v is not None}) if params else "")
        headers = dict(headers or {})
        if json is not None:
            content = jsonlib.dumps(json).encode()
            headers["content-type"] = "application/json"
        # A kept-alive connection the agent already closed fails before any answer; a
        # request whose body can be sent again then gets one more try on a new connection.
        retry = not isinstance(content, AsyncIterable)
        conn: _Connection | None = None
        try:
            while True:
                conn, reused = await asyncio.wait_for(self._connection(), CONNECT_TIMEOUT_S)
                try:
                    await self._send_request(conn, method, target, content, headers)
                    event = await conn.next_event()
                    if isinstance(event, h11.ConnectionClosed):
                        raise ConnectionResetError("the agent closed the connection")
                    break
                except (OSError, h11.ProtocolError) as exc:
                    conn.close()
                    conn = None
                    if not (reused and retry):
                        raise ConnectionError(str(exc)) from exc
            assert isinstance(event, h11.Response)
            response_headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in event.headers}
            finished = False

            async def body() -> AsyncIterator[bytes]:
                nonlocal finished
                while True:
                    item = await conn.next_event()  # type: ignore[union-attr]
                    if isinstance(item, h11.Data):
                        yield bytes(item.data)
                    elif isinstance(item, h11.EndOfMessage):
                        finished = True
                        return
                    else:
                        raise ConnectionResetError("the agent closed the connection mid-answer")

            yield AgentResponse(event.status_code, response_headers, body())
            if finished:
                self._release(conn)
                conn = None
        except (OSError, h11.ProtocolError) as exc:
            raise ApiError(502, f"the cell's agent is unreachable: {exc}", "agent_unreachable") from exc
        finally:
            if conn is not None:
                conn.close()

    async def request(self, method: str, path: str, *, timeout: float | None = 30.0, **kwargs: Any) -> Any:
        """A JSON call; agent errors come back in the API's error shape."""
        try:
            async with asyncio.timeout(timeout):
                async with self.open(method, path, **kwargs) as response:
                    raw = await response.read()
        except TimeoutError as exc:
            raise ApiError(504, f"the cell's agent did not answer within {timeout:g} s", "agent_timeout") from exc
        if response.status >= 400:
            raise_for(response.status, raw)
        try:
            return await _decode(raw)
        except ValueError as exc:
            raise ApiError(502, "the cell's agent answered something that is not JSON", "agent_error") from exc

    @contextlib.asynccontextmanager
    async def stream(self, method: str, path: str, **kwargs: Any) -> AsyncIterator[AgentResponse]:
        """A streamed answer (raw bytes), checked for errors before it is handed over."""
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S) as deadline:
                context = self.open(method, path, **kwargs)
                response = await context.__aenter__()
                if response.status >= 400:
                    raw = await response.read()
                    await context.__aexit__(None, None, None)
                    raise_for(response.status, raw)
                deadline.reschedule(None)  # the body may take as long as it takes
        except TimeoutError as exc:
            raise ApiError(504, "the cell's agent did not answer in time", "agent_timeout") from exc
        try:
            yield response
        except BaseException as exc:
            if not await context.__aexit__(type(exc), exc, exc.__traceback__):
                raise
        else:
            await context.__aexit__(None, None, None)

    @contextlib.asynccontextmanager
    async def stream_lines(
        self, method: str, path: str, max_line: int = MAX_LINE, **kwargs: Any
    ) -> AsyncIterator[AsyncIterator[dict]]:
        """A streamed NDJSON answer, one JSON object per line, as the agent sends them.

        The agent runs with the cell's privileges, so what it sends is bounded here: a
        line longer than ``max_line`` ends the stream with an error.
        """
        async with self.stream(method, path, **kwargs) as response:

            async def lines() -> AsyncIterator[dict]:
                pending = bytearray()
                try:
                    async for chunk in response.body:
                        start = len(pending)
                        pending += chunk
                        end = pending.find(b"\n", start)
                        while end != -1:
                            line = bytes(pending[:end])
                            del pending[: end + 1]
                            if line:
                                yield await _decode(line)
                            end = pending.find(b"\n")
                        if len(pending) > max_line:
                            raise ApiError(502, f"the cell's agent sent a line over {max_line} bytes", "agent_error")
                except (OSError, h11.ProtocolError) as exc:
                    raise ApiError(502, f"the cell's agent went away mid-answer: {exc}", "agent_unreachable") from exc

            yield lines()

    async def close(self) -> None:
        for conn in self._idle:
            conn.close()
        self._idle.clear()


async def _decode(line: bytes) -> dict:
    # A big line (a large rich result) is parsed off the event loop, which serves everyone.
    if len(line) > _PARSE_IN_THREAD:
        return await asyncio.to_thread(jsonlib.loads, line)
    return jsonlib.loads(line)


def raise_for(status: int, raw: bytes) -> None:
    try:
        body = jsonlib.loads(raw)
        error, error_type = body["error"], body.get("error_type", "error")
    except (ValueError, KeyError, TypeError):
        raise ApiError(502, f"the cell's agent answered {status}", "agent_error") from None
    raise ApiError(status, error, error_type)
