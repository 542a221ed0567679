"""Host-side fetch: ``POST /v1/cells/{id}/fetch``."""

from __future__ import annotations

import posixpath
from typing import AsyncIterator, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field, StrictStr, field_validator

from ..errors import bad_request
from ..fetch import FetchOutcome, FetchRequest, Guard, NetworkPolicy, fetch_into
from .cells import manager
from .deps import tenant
from .schemas import ErrorBody, StringMap

router = APIRouter(prefix="/v1/cells", tags=["fetch"], responses={404: {"model": ErrorBody}, 403: {"model": ErrorBody}})

DATA_DIR = "/data"
DEFAULT_SAVE_TO = "/data/__fetch_response__.json"
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


class FetchBody(BaseModel):
    url: StrictStr = Field(min_length=1, description="http or https; private destinations are refused.")
    method: StrictStr = "GET"
    headers: StringMap | None = None
    body: StrictStr | None = Field(None, description="Request body, sent as UTF-8.")
    timeout_secs: float = Field(30, gt=0, description="Bound on the whole fetch, saving included.")
    save_to: StrictStr | None = Field(
        None, description=f"Where the response body goes, under {DATA_DIR} (default {DEFAULT_SAVE_TO})."
    )

    @field_validator("headers")
    @classmethod
    def _plain_headers(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name, content in (value or {}).items():
            if not name.isascii() or not name.strip() or any(c in name for c in " :\r\n") or not content.isascii() \
                    or any(c in content for c in "\r\n"):
                raise ValueError(f"header {name!r} must be an ASCII name without spaces or colons, with an ASCII value on one line")
        return value

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str) -> str:
        if value.upper() not in _METHODS:
            raise ValueError(f"must be one of {', '.join(_METHODS)}")
        return value.upper()


class FetchResult(BaseModel):
    status: int = Field(description="The destination's status; 0 when no response came.")
    body: str = Field(description="The body (its first 1 MiB at most): text, or base64 when `encoding` says so.")
    encoding: Literal["utf-8", "base64"]
    body_truncated: bool = Field(description="True when `body` is only the head; the whole is in `saved_to`.")
    content_type: str
    body_size: int = Field(description="Bytes of the (decoded) response body received.")
    latency_ms: float
    error: str | None = Field(None, description="Why the fetch failed (unreachable, timeout, too large...).")
    saved_to: str | None = Field(None, description="The file in the cell holding the whole body.")
    url: str = Field(description="The final URL, after redirects.")
    redirects: int
    headers: dict[str, str]


def save_path(save_to: str | None) -> str:
    """``save_to`` as an absolute path that stays under /data."""
    if not save_to:
        return DEFAULT_SAVE_TO
    path = posixpath.normpath(posixpath.join(DATA_DIR, save_to))
    if not path.startswith(DATA_DIR + "/"):
        raise bad_request(f"save_to must name a file under {DATA_DIR}, e.g. 'api.json' or '/data/in/api.json'")
    return path


def fetch_guard(request: Request) -> Guard:
    state = request.app.state
    if not hasattr(state, "fetch_guard"):
        state.fetch_guard = Guard(state.config.fetch_allow_private, setting="CELLBOX_FETCH_ALLOW_PRIVATE=1")
    return state.fetch_guard


@router.post("/{cell_id}/fetch", response_model=FetchResult)
async def fetch(request: Request, cell_id: str, body: FetchBody, tenant_id: str = Depends(tenant)) -> FetchResult:
    """Fetch a URL on the host and save the response body into the cell.

    A destination the guard refuses answers 403; one that fails (unreachable, timeout,
    too large) answers 200 with `error` set, as the published client expects.
    """
    config = request.app.state.config
    if body.timeout_secs > config.fetch_max_timeout_s:
        raise bad_request(
            f"timeout_secs {body.timeout_secs:g} is above this server's maximum of {config.fetch_max_timeout_s:g}"
        )
    path = save_path(body.save_to)
    cells = manager(request)
    live = await cells.running(tenant_id, cell_id)

    async def into_cell(chunks: AsyncIterator[bytes]) -> None:
        # The agent writes beside the target and renames: a cut-off body leaves the old file.
        await live.agent.request("PUT", "/files/raw", params={"path": path}, content=chunks, timeout=None)

    async with cells.activity(live):
        outcome: FetchOutcome = await fetch_into(
            fetch_guard(request),
            NetworkPolicy.of(live.record.network),
            FetchRequest(body.method, body.url, body.headers or {}, body.body.encode() if body.body is not None else None),
            into_cell,
            save_to=path,
            timeout_s=body.timeout_secs,
            max_bytes=config.fetch_max_bytes,
            max_redirects=config.fetch_max_redirects,
        )
    cells.meters.usage.add(tenant_id, fetches=1, fetch_bytes=outcome.body_size or 0)
    return FetchResult(**outcome.__dict__)
