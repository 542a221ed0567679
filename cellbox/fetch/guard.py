"""The SSRF guard: which destinations the server may connect to on someone's behalf.

Every address a name resolves to is checked (one bad A or AAAA record refuses the
whole name), and the caller then connects to a checked address, never to the name,
so DNS cannot answer differently between the check and the connection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable

import httpx

from ..errors import ApiError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]

# Cloud metadata services: never reachable, whatever the operator allows.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean...
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
    )
)
METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata", "instance-data", "instance-data.ec2.internal"})
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Kinds an operator may allow for development (CELLBOX_*_ALLOW_PRIVATE);
# metadata, unspecified, multicast and reserved addresses stay refused.
PRIVATE_KINDS = frozenset({"loopback", "private", "link-local", "unique-local", "non-public"})


class DestinationRefused(ApiError):
    def __init__(self, reason: str, status: int = 403, error_type: str = "destination_forbidden") -> None:
        super().__init__(status, reason, error_type)


class ResolutionFailed(Exception):
    """The name does not resolve: an unreachable destination, not a forbidden one."""


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def classify(address: str | IPAddress) -> tuple[str, str] | None:
    """``(kind, description)`` of a non-public address, or None for a public one."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            verdict = classify(embedded)
            if verdict is not None:
                return verdict[0], f"{verdict[1]} (embedded in IPv6 {ip})"
    if ip in METADATA_ADDRESSES:
        return "metadata", f"{ip} is a cloud metadata address"
    if ip.is_unspecified:
        return "unspecified", f"{ip} is the unspecified address"
    if ip.is_loopback:
        return "loopback", f"{ip} is a loopback address"
    if ip.is_link_local:
        return "link-local", f"{ip} is a link-local address"
    if ip.is_multicast:
        return "multicast", f"{ip} is a multicast address"
    if isinstance(ip, ipaddress.IPv6Address) and ip in _UNIQUE_LOCAL:
        return "unique-local", f"{ip} is a unique-local address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "private", f"{ip} is a (deprecated) site-local address"
    if ip.is_reserved:
        return "reserved", f"{ip} is a reserved address"
    if ip.is_private:
        return "private", f"{ip} is a private address"
    if not ip.is_global:
        return "non-public", f"{ip} is not a public address (shared, documentation or special-purpose range)"
    return None


@dataclass(frozen=True)
class NetworkPolicy:
    """A cell's ``network.allow_out`` / ``deny_out``: hosts, ``*.domain`` wildcards, CIDRs."""

    allow_out: tuple[str, ...] = ()
    deny_out: tuple[str, ...] = ()

    @classmethod
    def of(cls, network: dict | None) -> "NetworkPolicy":
        network = network or {}
        return cls(tuple(network.get("allow_out") or ()), tuple(network.get("deny_out") or ()))

    @staticmethod
    def _rule_matches(rule: str, host: str, addresses: list[IPAddress]) -> bool:
        rule = rule.strip().lower().rstrip(".")
        try:
            network = ipaddress.ip_network(rule.strip("[]"), strict=False)
        except ValueError:
            network = None
        if network is not None:
            return any(a.version == network.version and a in network for a in addresses)
        if rule.startswith("*."):
            return host.endswith(rule[1:])
        return host == rule

    def first_match(self, rules: Iterable[str], host: str, addresses: list[IPAddress]) -> str | None:
        return next((r for r in rules if self._rule_matches(r, host, addresses)), None)


@dataclass
class Destination:
    """A URL whose every address passed the guard; connect only to ``addresses``."""

    url: httpx.URL
    host: str
    port: int
    addresses: list[str] = field(default_factory=list)


async def system_resolver(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ResolutionFailed(f"could not resolve {host}: {exc.strerror or exc}") from exc
    addresses: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = str(sockaddr[0]).split("%", 1)[0]
        if address not in addresses:
            addresses.append(address)
    return addresses


class Guard:
    def __init__(self, allow_private: bool = False, resolver: Resolver = system_resolver, setting: str = "") -> None:
        self.allow_private = allow_private
        self.resolver = resolver
        # Named in refusals, so an operator knows what would allow the destination.
        self.setting = setting

    async def check(self, url: str | httpx.URL, policy: NetworkPolicy | None = None) -> Destination:
        """The checked destination of ``url``; raises DestinationRefused or ResolutionFailed."""
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError) as exc:
            raise DestinationRefused(f"{url!r} is not a valid URL: {exc}", 400, "invalid_url") from exc
        if parsed.scheme not in ("http", "https"):
            raise DestinationRefused(
                f"only http and https URLs are allowed, not {parsed.scheme or 'a URL without a scheme'}",
                400, "unsupported_scheme",
            )
        # The ASCII (IDNA) form is what DNS, the Host header and TLS see.
        host = parsed.raw_host.decode("ascii").lower().rstrip(".")
        if not host:
            raise DestinationRefused(f"{str(parsed)!r} has no host", 400, "invalid_url")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        if host in METADATA_HOSTS:
            raise DestinationRefused(f"destination {host} refused: it is a cloud metadata service")
        policy = policy or NetworkPolicy()
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            # Name rules first: a denied name is refused whether or not it resolves.
            self._refuse_denied(policy, host, [])
            addresses = [ipaddress.ip_address(a) for a in await self.resolver(host, port)]
            if not addresses:
                raise ResolutionFailed(f"{host} has no address")
        self._refuse_denied(policy, host, addresses)
        if policy.allow_out and policy.first_match(policy.allow_out, host, addresses) is None:
            raise DestinationRefused(f"destination {host} refused: it matches none of the cell's network.allow_out rules")
        for address in addresses:
            self._refuse_non_public(host, address)
        return Destination(parsed, host, port, [str(a) for a in addresses])

    def _refuse_non_public(self, host: str, address: IPAddress) -> None:
        verdict = classify(address)
        if verdict is None:
            return
        kind, description = verdict
        if self.allow_private and kind in PRIVATE_KINDS:
            return
        hint = ""
        if self.setting and kind in PRIVATE_KINDS:
            hint = f"; the operator can allow private destinations with {self.setting}"
        named = "" if str(address) == host else f" (it resolves to {address})"
        raise DestinationRefused(f"destination {host} refused{named}: {description}{hint}")

    @staticmethod
    def _refuse_denied(policy: NetworkPolicy, host: str, addresses: list[IPAddress]) -> None:
        denied = policy.first_match(policy.deny_out, host, addresses)
        if denied is not None:
            raise DestinationRefused(f"destination {host} refused: it matches the cell's network.deny_out rule {denied!r}")
