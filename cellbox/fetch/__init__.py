"""Host-side fetch: the server fetches a URL for a cell and streams the response into it.

Cells have no network; this is how data gets in. The destination passes the SSRF
guard (``guard.py``) on every hop, and the response is bounded in size and time
and streamed to a sink (the cell's agent), never held whole.
"""

from __future__ import annotations

import asyncio
import base64
import codecs
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable

import httpx

from .client import FetchRequest, TooManyRedirects, send_following
from .guard import DestinationRefused, Guard, NetworkPolicy, ResolutionFailed, classify

__all__ = [
    "DestinationRefused", "FetchOutcome", "FetchRequest", "Guard", "NetworkPolicy", "classify", "fetch_into",
]

# The answer echoes at most this much of the body; the whole of it is in the cell.
ECHO_BYTES = 1024 * 1024
_BINARY_TYPES = ("image/", "audio/", "video/", "font/", "application/octet-stream", "application/zip",
                 "application/gzip", "application/pdf", "application/x-tar", "application/wasm")

Sink = Callable[[AsyncIterator[bytes]], Awaitable[None]]


class ResponseTooLarge(Exception):
    pass


class UpstreamFailed(Exception):
    """Reading the response failed midway (kept apart from the sink's own HTTP errors)."""


@dataclass
class FetchOutcome:
    url: str
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = ""
    body: str = ""
    encoding: str = "utf-8"
    body_truncated: bool = False
    body_size: int = 0
    latency_ms: float = 0.0
    error: str | None = None
    saved_to: str | None = None
    redirects: int = 0


class _Tap:
    """The response body as chunks for the sink, counted, capped, its head kept for the echo."""

    def __init__(self, response: httpx.Response, max_bytes: int) -> None:
        self.response = response
        self.max_bytes = max_bytes
        self.size = 0
        self.head = bytearray()

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.response.aiter_bytes():
                self.size += len(chunk)
                if len(self.head) < ECHO_BYTES:
                    self.head += chunk[: ECHO_BYTES - len(self.head)]
                if self.size > self.max_bytes:
                    raise ResponseTooLarge(
                        f"the response is larger than this server's limit of {self.max_bytes} bytes; "
                        "it was stopped there and nothing was saved"
                    )
                yield chunk
        except httpx.HTTPError as exc:
            raise UpstreamFailed(f"reading the response failed: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def echo(head: bytes, complete: bool, content_type: str, charset: str | None) -> tuple[str, str]:
    """``(body, encoding)``: text when the bytes are text, else base64."""
    if not content_type.lower().startswith(_BINARY_TYPES):
        try:
            decoder = codecs.getincrementaldecoder(charset or "utf-8")()
            # Not final when cut: a character split by the cut is dropped, not an error.
            return decoder.decode(bytes(head), final=complete), "utf-8"
        except (UnicodeDecodeError, LookupError):
            pass
    return base64.b64encode(head).decode("ascii"), "base64"


async def fetch_into(
    guard: Guard,
    policy: NetworkPolicy | None,
    request: FetchRequest,
    sink: Sink,
    *,
    save_to: str,
    timeout_s: float,
    max_bytes: int,
    max_redirects: int,
) -> FetchOutcome:
    """Fetch and stream the body to ``sink``; failures of the destination come back in ``error``.

    Raises DestinationRefused for a destination the guard refuses (on any hop);
    errors of the sink propagate.
    """
    started = time.perf_counter()
    outcome = FetchOutcome(url=request.url)
    hop = tap = None
    try:
        async with asyncio.timeout(timeout_s):
            hop, outcome.redirects = await send_following(
                guard, policy, request, max_redirects, httpx.Timeout(timeout_s)
            )
            response = hop.response
            outcome.url = str(hop.destination.url)
            outcome.status = response.status_code
            outcome.headers = dict(response.headers)
            outcome.content_type = response.headers.get("content-type", "")
            tap = _Tap(response, max_bytes)
            await sink(tap.chunks())
            outcome.saved_to = save_to
    except TimeoutError:
        outcome.error = f"the fetch did not finish within {timeout_s:g} s (timeout_secs); nothing was saved"
    except (ResolutionFailed, TooManyRedirects, ResponseTooLarge, UpstreamFailed) as exc:
        outcome.error = str(exc)
    except httpx.TimeoutException as exc:
        outcome.error = f"the destination did not answer in time: {_describe(exc)}"
    except httpx.HTTPError as exc:
        outcome.error = f"could not reach {request.url}: {_describe(exc)}"
    finally:
        if hop is not None:
            await hop.aclose()
    outcome.latency_ms = round((time.perf_counter() - started) * 1000, 3)
    if tap is not None:
        outcome.body_size = tap.size
        outcome.body_truncated = tap.size > len(tap.head)
        outcome.body, outcome.encoding = echo(
            tap.head, not outcome.body_truncated, outcome.content_type, hop.response.charset_encoding if hop else None
        )
    return outcome
