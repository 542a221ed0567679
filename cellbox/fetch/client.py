"""HTTP to checked destinations: connect to the checked address, follow redirects by hand.

httpx would resolve the name again on connect (and follow redirects anywhere), so
each hop is sent to one of the guard's addresses with the real name in the Host
header and in TLS (SNI and certificate check), and every redirect is checked anew.
Each hop gets its own client: a pooled connection made for one name must not be
reused for another name on the same address.
"""

from __future__ import annotations

import functools
import ipaddress
import ssl
from dataclasses import dataclass
from typing import Any

import httpx

from .guard import Destination, Guard, NetworkPolicy

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Never forwarded as given: the transport sets them from the request itself.
_CONNECTION_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection", "keep-alive", "upgrade"})
# Dropped when a redirect leaves the origin, as browsers and httpx do.
_CREDENTIAL_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization"})


class TooManyRedirects(Exception):
    pass


@functools.lru_cache(maxsize=1)
def _ssl_context() -> ssl.SSLContext:
    # Loading the CA bundle costs milliseconds: once per process, shared by every hop.
    return httpx.create_ssl_context()


def clean_headers(headers: dict[str, str] | None) -> dict[str, str]:
    return {k: v for k, v in (headers or {}).items() if k.lower() not in _CONNECTION_HEADERS}


class Hop:
    """One request to a checked destination, its response streaming."""

    def __init__(self, client: httpx.AsyncClient, response: httpx.Response, destination: Destination) -> None:
        self.client = client
        self.response = response
        self.destination = destination

    async def aclose(self) -> None:
        await self.response.aclose()
        await self.client.aclose()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


async def send_pinned(
    destination: Destination,
    method: str,
    headers: dict[str, str],
    content: bytes | None,
    timeout: httpx.Timeout,
) -> Hop:
    """Send to the first of the destination's addresses that accepts a connection."""
    url = destination.url
    headers = {**headers, "host": url.netloc.decode("ascii")}
    extensions: dict[str, Any] = {}
    if url.scheme == "https" and not _is_ip(destination.host):
        extensions["sni_hostname"] = destination.host
    last_error: Exception | None = None
    for address in destination.addresses:
        client = httpx.AsyncClient(verify=_ssl_context(), trust_env=False, follow_redirects=False, timeout=timeout)
        request = client.build_request(
            method, url.copy_with(host=address), headers=headers, content=content, extensions=extensions
        )
        try:
            return Hop(client, await client.send(request, stream=True), destination)
        except httpx.ConnectError as exc:
            await client.aclose()
            last_error = exc
        except BaseException:
            await client.aclose()
            raise
    assert last_error is not None
    raise last_error


@dataclass
class FetchRequest:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None = None


async def send_following(
    guard: Guard,
    policy: NetworkPolicy | None,
    request: FetchRequest,
    max_redirects: int,
    timeout: httpx.Timeout,
) -> tuple[Hop, int]:
    """The final hop (its response not yet read) and how many redirects led to it."""
    method, url, headers, body = request.method.upper(), request.url, clean_headers(request.headers), request.body
    for redirects in range(max_redirects + 1):
        destination = await guard.check(url, policy)
        hop = await send_pinned(destination, method, headers, body, timeout)
        location = hop.response.headers.get("location")
        if hop.response.status_code not in REDIRECT_STATUSES or not location:
            return hop, redirects
        await hop.aclose()
        if redirects == max_redirects:
            raise TooManyRedirects(f"more than {max_redirects} redirects (the last one to {location})")
        next_url = destination.url.join(location)
        status = hop.response.status_code
        if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
            method, body = "GET", None
            headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
        if (next_url.scheme, next_url.host, next_url.port) != (destination.url.scheme, destination.url.host, destination.url.port):
            headers = {k: v for k, v in headers.items() if k.lower() not in _CREDENTIAL_HEADERS}
        url = str(next_url)
    raise AssertionError("unreachable")
