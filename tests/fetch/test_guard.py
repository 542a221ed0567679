"""The SSRF guard and redirect checks, as pure logic with a fake resolver."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from cellbox.fetch import client
from cellbox.fetch.client import FetchRequest, Hop, TooManyRedirects, send_following
from cellbox.fetch.guard import DestinationRefused, Guard, NetworkPolicy, ResolutionFailed, classify

PUBLIC = "93.184.216.34"
DNS = {
    "public.example": [PUBLIC, "2606:2800:220:1:248:1893:25c8:1946"],
    "internal.example": ["10.0.0.5"],
    "sneaky.example": [PUBLIC, "127.0.0.1"],
    "metadata.example": ["169.254.169.254"],
    "api.partner.example": [PUBLIC],
}


async def fake_resolver(host: str, port: int) -> list[str]:
    if host not in DNS:
        raise ResolutionFailed(f"could not resolve {host}")
    return DNS[host]


def check(url: str, allow_private: bool = False, **policy: list[str]):
    guard = Guard(allow_private, resolver=fake_resolver)
    network = NetworkPolicy(tuple(policy.get("allow_out", ())), tuple(policy.get("deny_out", ())))
    return asyncio.run(guard.check(url, network))


@pytest.mark.parametrize(
    "address, kind",
    [
        ("127.0.0.1", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
        ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"),
        ("169.254.169.254", "metadata"), ("fd00:ec2::254", "metadata"), ("100.100.100.200", "metadata"),
        ("169.254.1.1", "link-local"), ("fe80::1", "link-local"), ("fc00::1", "unique-local"),
        ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
        ("100.64.0.1", "non-public"), ("240.0.0.1", "reserved"), ("64:ff9b::a00:1", "private"),
        ("fec0::1", "private"),
    ],
)
def test_non_public_addresses_are_classified_by_kind(address, kind):
    assert classify(address)[0] == kind


@pytest.mark.parametrize("address", ["8.8.8.8", PUBLIC, "2606:4700:4700::1111"])
def test_public_addresses_pass(address):
    assert classify(address) is None


def test_a_name_with_one_private_record_among_public_ones_is_refused():
    with pytest.raises(DestinationRefused) as refused:
        check("http://sneaky.example/")
    assert refused.value.status == 403 and "127.0.0.1 is a loopback address" in refused.value.error


def test_the_checked_addresses_are_the_ones_to_connect_to():
    destination = check("https://public.example:8443/x")
    assert destination.addresses == DNS["public.example"]
    assert (destination.host, destination.port) == ("public.example", 8443)


def test_allowing_private_destinations_never_allows_metadata():
    assert check("http://127.0.0.1/", allow_private=True).addresses == ["127.0.0.1"]
    with pytest.raises(DestinationRefused, match="metadata"):
        check("http://metadata.example/", allow_private=True)
    with pytest.raises(DestinationRefused, match="metadata"):
        check("http://metadata.google.internal/", allow_private=True)


def test_refusal_names_the_setting_that_would_allow_it():
    guard = Guard(False, resolver=fake_resolver, setting="CELLBOX_FETCH_ALLOW_PRIVATE=1")
    with pytest.raises(DestinationRefused, match="CELLBOX_FETCH_ALLOW_PRIVATE=1"):
        asyncio.run(guard.check("http://internal.example/"))


@pytest.mark.parametrize("url", ["ftp://public.example/", "file:///etc/passwd", "gopher://public.example/"])
def test_only_http_and_https(url):
    with pytest.raises(DestinationRefused) as refused:
        check(url)
    assert refused.value.status == 400 and refused.value.error_type == "unsupported_scheme"


@pytest.mark.parametrize(
    "rule", ["93.184.216.0/24", "public.example", "*.example", "PUBLIC.EXAMPLE", "2606:2800::/32"]
)
def test_deny_out_rules_match_hosts_wildcards_and_cidrs(rule):
    with pytest.raises(DestinationRefused, match="deny_out"):
        check("http://public.example/", deny_out=[rule])


def test_a_wildcard_matches_subdomains_only():
    assert check("http://public.example/", deny_out=["*.public.example"]).host == "public.example"


def test_allow_out_admits_only_what_it_names():
    assert check("http://api.partner.example/", allow_out=["*.partner.example"]).host == "api.partner.example"
    with pytest.raises(DestinationRefused, match="allow_out"):
        check("http://public.example/", allow_out=["*.partner.example"])


def test_unresolvable_names_are_not_refusals():
    with pytest.raises(ResolutionFailed):
        check("http://nowhere.example/")


class _FakeRedirects:
    """Stands in for the network: each URL answers with a redirect to the next."""

    def __init__(self, hops: dict[str, str]) -> None:
        self.hops = hops
        self.sent: list[tuple[str, list[str]]] = []

    async def __call__(self, destination, method, headers, content, timeout) -> Hop:
        url = str(destination.url)
        self.sent.append((url, destination.addresses))
        if url in self.hops:
            response = httpx.Response(302, headers={"location": self.hops[url]})
        else:
            response = httpx.Response(200, content=b"ok")
        return Hop(httpx.AsyncClient(), response, destination)


def follow(monkeypatch, hops: dict[str, str], url: str, max_redirects: int = 5, allow_private: bool = False):
    fake = _FakeRedirects(hops)
    monkeypatch.setattr(client, "send_pinned", fake)
    guard = Guard(allow_private, resolver=fake_resolver)

    async def run():
        hop, redirects = await send_following(
            guard, NetworkPolicy(), FetchRequest("GET", url, {}), max_redirects, httpx.Timeout(5)
        )
        await hop.aclose()
        return redirects

    return asyncio.run(run()), fake.sent


def test_redirects_are_followed_to_checked_addresses(monkeypatch):
    redirects, sent = follow(monkeypatch, {"http://public.example/a": "https://api.partner.example/b"},
                             "http://public.example/a")
    assert redirects == 1
    assert sent == [("http://public.example/a", DNS["public.example"]),
                    ("https://api.partner.example/b", DNS["api.partner.example"])]


@pytest.mark.parametrize("target", ["http://internal.example/", "http://169.254.169.254/latest/meta-data/",
                                    "http://[::1]:8001/v1/cells", "http://sneaky.example/"])
def test_a_redirect_into_a_private_address_is_refused(monkeypatch, target):
    with pytest.raises(DestinationRefused):
        follow(monkeypatch, {"http://public.example/": target}, "http://public.example/")


def test_too_many_redirects_stop(monkeypatch):
    loop = {"http://public.example/a": "/b", "http://public.example/b": "/a"}
    with pytest.raises(TooManyRedirects):
        follow(monkeypatch, loop, "http://public.example/a", max_redirects=3)
