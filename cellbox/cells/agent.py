"""The server's side of the agent: HTTP over the cell's unix socket."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, AsyncIterator

import httpx

from ..errors import ApiError


class AgentClient:
    def __init__(self, socket_path: Path) -> None:
        self.client = httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(uds=str(socket_path)),
            base_url="http://cell-agent",
            timeout=httpx.Timeout(30.0, read=None),
        )

    async def request(self, method: str, path: str, *, timeout: float | None = 30.0, **kwargs: Any) -> Any:
        """A JSON call; agent errors come back in the API's error shape."""
        try:
            response = await self.client.request(method, path, timeout=timeout, **kwargs)
        except httpx.TimeoutException as exc:
            raise ApiError(504, f"the cell's agent did not answer in time ({exc})", "agent_timeout") from exc
        except httpx.TransportError as exc:
            raise ApiError(502, f"the cell's agent is unreachable: {exc}", "agent_unreachable") from exc
        if response.status_code >= 400:
            self._raise_for(response)
        return response.json()

    @contextlib.asynccontextmanager
    async def stream_lines(self, method: str, path: str, **kwargs: Any) -> AsyncIterator[AsyncIterator[dict]]:
        """A streamed NDJSON answer, one JSON object per line, as the agent sends them."""
        try:
            async with self.client.stream(method, path, timeout=httpx.Timeout(30.0, read=None), **kwargs) as response:
                if response.status_code >= 400:
                    await response.aread()
                    self._raise_for(response)

                async def lines() -> AsyncIterator[dict]:
                    async for line in response.aiter_lines():
                        if line:
                            yield json.loads(line)

                yield lines()
        except httpx.TransportError as exc:
            raise ApiError(502, f"the cell's agent is unreachable: {exc}", "agent_unreachable") from exc

    @staticmethod
    def _raise_for(response: httpx.Response) -> None:
        try:
            body = response.json()
            error, error_type = body["error"], body.get("error_type", "error")
        except (ValueError, KeyError):
            raise ApiError(502, f"the cell's agent answered {response.status_code}", "agent_error")
        raise ApiError(response.status_code, error, error_type)

    async def close(self) -> None:
        await self.client.aclose()
