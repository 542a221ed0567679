"""The server's side of the agent: HTTP over the cell's unix socket."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
            try:
                body = response.json()
                raise ApiError(response.status_code, body["error"], body.get("error_type", "error"))
            except (ValueError, KeyError):
                raise ApiError(502, f"the cell's agent answered {response.status_code}", "agent_error")
        return response.json()

    async def close(self) -> None:
        await self.client.aclose()
