"""A small threaded HTTP/1.1 server on h11: routing and framing, nothing else.

Each connection gets a thread. Handlers are plain functions registered on a
``Router``; they take a ``Request`` and return a ``Response``. A response body is
either bytes or an iterator of bytes (sent chunked, for streams, unless the
handler sets ``content-length`` itself), so services never deal with the wire.
An ``Upgrade`` response switches protocols and hands the raw socket to the service.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import parse_qs, urlsplit

import h11

MAX_JSON_BODY = 64 * 1024 * 1024
_READ_SIZE = 64 * 1024


class HTTPError(Exception):
    """Raised by a handler to answer with the Cell API error shape."""

    def __init__(self, status: int, error: str, error_type: str = "error") -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.error_type = error_type


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    _conn: "_Connection" = field(repr=False)
    params: dict[str, str] = field(default_factory=dict)
    _consumed: bool = False

    def iter_body(self) -> Iterator[bytes]:
        """The request body in chunks, as it arrives."""
        if self._consumed:
            return
        self._consumed = True
        yield from self._conn.iter_body()

    def client_gone(self) -> bool:
        """Whether the client closed its side (streams check this while idle)."""
        return self._conn.peer_closed()

    @property
    def socket(self) -> socket.socket:
        """The connection's socket, to wait on alongside a stream's own source."""
        return self._conn.sock

    def read_body(self, limit: int = MAX_JSON_BODY) -> bytes:
        chunks, size = [], 0
        for chunk in self.iter_body():
            size += len(chunk)
            if size > limit:
                raise HTTPError(413, f"request body is larger than {limit} bytes", "payload_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    def json(self) -> dict[str, Any]:
        raw = self.read_body()
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise HTTPError(400, f"request body is not valid JSON: {exc}", "invalid_request") from exc
        if not isinstance(value, dict):
            raise HTTPError(400, "request body must be a JSON object", "invalid_request")
        return value


@dataclass
class Response:
    status: int = 200
    body: bytes | Iterable[bytes] = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    # Called once the response is sent or the client went away (streams clean up here).
    on_close: Callable[[], None] | None = None


@dataclass
class Upgrade(Response):
    """Answer ``101 Switching Protocols`` and give the connection to ``take_over``.

    ``take_over(sock, trailing)`` owns the socket until it returns (then it is
    closed); ``trailing`` holds bytes the client sent after its request.
    """

    status: int = 101
    protocol: str = ""
    take_over: Callable[[socket.socket, bytes], None] | None = None


def json_response(value: Any, status: int = 200) -> Response:
    return Response(status=status, body=json.dumps(value).encode())


def ndjson_line(value: Any) -> bytes:
    """One event of a streamed ``application/x-ndjson`` body."""
    return json.dumps(value).encode() + b"\n"


Handler = Callable[[Request], Response]


class Router:
    """Routes by method and path; ``{name}`` in a path matches one segment."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []

    def route(self, method: str, path: str) -> Callable[[Handler], Handler]:
        pattern = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", path) + "$")

        def register(handler: Handler) -> Handler:
            self._routes.append((method, pattern, handler))
            return handler

        return register

    def include(self, other: "Router") -> None:
        self._routes.extend(other._routes)

    def find(self, request: "Request") -> Handler:
        path_matched = False
        for method, pattern, handler in self._routes:
            match = pattern.match(request.path)
            if match is None:
                continue
            path_matched = True
            if method == request.method:
                request.params = match.groupdict()
                return handler
        if path_matched:
            raise HTTPError(405, f"{request.method} is not allowed on {request.path}", "method_not_allowed")
        raise HTTPError(404, f"no agent endpoint {request.path}", "not_found")


class _Connection:
    def __init__(self, sock: socket.socket, router: Router) -> None:
        self.sock = sock
        self.router = router
        self.h11 = h11.Connection(h11.SERVER)

    def _next_event(self) -> Any:
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                data = self.sock.recv(_READ_SIZE)
                self.h11.receive_data(data)
                continue
            return event

    def peer_closed(self) -> bool:
        try:
            return self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True

    def iter_body(self) -> Iterator[bytes]:
        while True:
            event = self._next_event()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionError("client closed the connection mid-body")

    def _send(self, event: Any) -> None:
        data = self.h11.send(event)
        if data:
            self.sock.sendall(data)

    def _respond(self, response: Response) -> None:
        headers = [("content-type", response.content_type)]
        headers += list(response.headers.items())
        body = response.body
        if isinstance(body, (bytes, bytearray)):
            headers.append(("content-length", str(len(body))))
            self._send(h11.Response(status_code=response.status, headers=headers))
            if body:
                self._send(h11.Data(data=bytes(body)))
        else:
            if "content-length" not in response.headers:
                headers.append(("transfer-encoding", "chunked"))
            self._send(h11.Response(status_code=response.status, headers=headers))
            for chunk in body:
                if chunk:
                    self._send(h11.Data(data=chunk))
        self._send(h11.EndOfMessage())

    def serve(self) -> None:
        try:
            while True:
                event = self._next_event()
                if isinstance(event, h11.ConnectionClosed):
                    return
                if not isinstance(event, h11.Request):
                    return
                if self._handle(event):
                    return  # the socket was handed over to an Upgrade's take_over
                if self.h11.our_state is h11.MUST_CLOSE or self.h11.their_state is h11.MUST_CLOSE:
                    return
                try:
                    self.h11.start_next_cycle()
                except h11.LocalProtocolError:
                    return
        except (ConnectionError, OSError, h11.ProtocolError):
            # LocalProtocolError too: a streamed file that shrank below its content-length.
            return
        finally:
            try:
                self.sock.close()
            except OSError:
                pass

    def _handle(self, event: h11.Request) -> bool:
        target = urlsplit(event.target.decode("latin-1"))
        query = {k: v[-1] for k, v in parse_qs(target.query, keep_blank_values=True).items()}
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
        request = Request(event.method.decode(), target.path, query, headers, self)
        response: Response
        try:
            response = self.router.find(request)(request)
        except HTTPError as exc:
            response = json_response({"error": exc.error, "error_type": exc.error_type}, exc.status)
        except Exception as exc:  # a bug in a service must not take the agent down
            traceback.print_exc()
            response = json_response(
                {"error": f"agent error: {type(exc).__name__}: {exc}", "error_type": "agent_error"}, 500
            )
        if not request._consumed:
            for _ in request.iter_body():  # drain so the connection can be reused
                pass
        try:
            if isinstance(response, Upgrade):
                self._switch(response)
                return True
            self._respond(response)
        finally:
            if response.on_close is not None:
                response.on_close()
        return False

    def _switch(self, upgrade: Upgrade) -> None:
        headers = [("connection", "Upgrade"), ("upgrade", upgrade.protocol)]
        headers += list(upgrade.headers.items())
        self._send(h11.InformationalResponse(status_code=101, headers=headers, reason=b"Switching Protocols"))
        trailing, _ = self.h11.trailing_data
        if upgrade.take_over is not None:
            upgrade.take_over(self.sock, bytes(trailing))


def serve_forever(listener: socket.socket, router: Router) -> None:
    """Accept connections on an already-listening socket, one thread each."""
    while True:
        try:
            sock, _ = listener.accept()
        except InterruptedError:
            continue
        threading.Thread(
            target=_Connection(sock, router).serve, name="conn", daemon=True
        ).start()
