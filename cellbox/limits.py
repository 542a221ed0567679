"""Request body cap, enforced while reading, never by reading the whole body first."""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.exceptions import HTTPException

Scope = dict[str, Any]
# Raw uploads stream to the cell's disk, which bounds them; no body cap there.
_STREAMED_UPLOAD = re.compile(r"^/v1/cells/[^/]+/files/upload$")


class BodySizeLimit:
    """ASGI middleware: 413 for a body over ``max_bytes``.

    A declared Content-Length is refused before any byte is read; a chunked body is
    counted as it streams and cut off at the cap.
    """

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or _STREAMED_UPLOAD.match(scope["path"]):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0
        started = False

        async def counting_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge(self.max_bytes)
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _TooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps({
            "error": f"request body is larger than this server's limit of {self.max_bytes} bytes",
            "error_type": "payload_too_large",
        }).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(HTTPException):
    # An HTTPException so the framework's body parsing lets it through unchanged
    # and the API's error handler renders it.
    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body is larger than this server's limit of {max_bytes} bytes")
