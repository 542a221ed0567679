"""HTTPS to a pinned address: the name still goes into SNI and the certificate check."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cellbox.fetch import client
from cellbox.fetch.client import FetchRequest, send_following
from cellbox.fetch.guard import Guard, NetworkPolicy


def _certificate(name: str, issuer_key, issuer_name, key, ca: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer_name or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def tls_origin(tmp_path_factory):
    """An HTTPS server on 127.0.0.1 whose certificate names only ``cellbox.test``, and a CA trusting it."""
    directory: Path = tmp_path_factory.mktemp("tls")
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("test ca", ca_key, None, ca_key, ca=True)
    leaf = _certificate("cellbox.test", ca_key, ca.subject, key)
    (directory / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            body = f"host={self.headers['host']}".encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(directory / "leaf.pem", directory / "key.pem")
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    trusting = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    try:
        yield httpd.server_address[1], trusting
    finally:
        httpd.shutdown()
        httpd.server_close()


def _get(monkeypatch, context: ssl.SSLContext, url: str) -> httpx.Response:
    monkeypatch.setattr(client, "_ssl_context", lambda: context)

    async def resolver(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    async def run() -> httpx.Response:
        hop, _ = await send_following(
            Guard(True, resolver=resolver), NetworkPolicy(), FetchRequest("GET", url, {}), 0, httpx.Timeout(5)
        )
        try:
            await hop.response.aread()
            return hop.response
        finally:
            await hop.aclose()

    return asyncio.run(run())


def test_the_certificate_is_checked_against_the_name_not_the_address(monkeypatch, tls_origin):
    port, context = tls_origin
    response = _get(monkeypatch, context, f"https://cellbox.test:{port}/")
    assert response.status_code == 200 and response.text == f"host=cellbox.test:{port}"


def test_a_certificate_for_another_name_is_refused(monkeypatch, tls_origin):
    port, context = tls_origin
    with pytest.raises(httpx.ConnectError, match="certificate|hostname"):
        _get(monkeypatch, context, f"https://impostor.test:{port}/")
