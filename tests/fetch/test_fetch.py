"""Host-side fetch on a real server and a real cell: saved into the cell, bounded, guarded."""

from __future__ import annotations

import base64

import pytest

from tests.conftest import sh
from tests.fetch.conftest import BINARY, FETCH_MAX_BYTES, sha256


def fetch(api, cell_id: str, url: str, **body: object):
    return api.post(f"/v1/cells/{cell_id}/fetch", json={"url": url, **body})


def test_fetch_saves_the_response_into_the_cell(private_api, fetch_cell, origin):
    response = fetch(private_api, fetch_cell, f"{origin}/text")
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["status"] == 200 and result["error"] is None
    assert result["body"] == "héllo from the host\n" and result["encoding"] == "utf-8"
    assert result["content_type"].startswith("text/plain")
    assert result["body_size"] == len("héllo from the host\n".encode()) and not result["body_truncated"]
    assert result["latency_ms"] > 0
    assert result["saved_to"] == "/data/__fetch_response__.json"
    assert sh(private_api, fetch_cell, "cat /data/__fetch_response__.json")["stdout"] == "héllo from the host\n"


def test_binary_bodies_come_back_as_base64_and_land_byte_for_byte(private_api, fetch_cell, origin):
    result = fetch(private_api, fetch_cell, f"{origin}/binary", save_to="in/blob.bin").json()
    assert result["encoding"] == "base64" and base64.b64decode(result["body"]) == BINARY
    assert result["saved_to"] == "/data/in/blob.bin"
    assert sh(private_api, fetch_cell, "sha256sum /data/in/blob.bin")["stdout"].split()[0] == sha256(BINARY)


def test_a_large_body_is_saved_whole_and_echoed_in_part(private_api, fetch_cell, origin):
    size = 3 * 1024 * 1024 + 5
    result = fetch(private_api, fetch_cell, f"{origin}/bytes?n={size}", save_to="/data/big.txt").json()
    assert result["error"] is None and result["body_size"] == size
    assert result["body_truncated"] and len(result["body"]) == 1024 * 1024
    assert sh(private_api, fetch_cell, "stat -c %s /data/big.txt")["stdout"].strip() == str(size)


def test_a_body_over_the_limit_is_stopped_and_not_saved(private_api, fetch_cell, origin):
    result = fetch(private_api, fetch_cell, f"{origin}/bytes?n={FETCH_MAX_BYTES + 1024 * 1024}", save_to="huge.txt").json()
    assert result["saved_to"] is None
    assert f"limit of {FETCH_MAX_BYTES} bytes" in result["error"]
    assert sh(private_api, fetch_cell, "ls /data/huge.txt")["exit_code"] != 0


def test_method_headers_and_body_are_sent(private_api, fetch_cell, origin):
    result = fetch(private_api, fetch_cell, f"{origin}/echo", method="post", headers={"X-Test": "yes"},
                   body="payload", save_to="echo.txt").json()
    host = origin.removeprefix("http://")
    assert result["status"] == 201 and result["body"] == f"POST yes {host} payload"


def test_redirects_are_followed(private_api, fetch_cell, origin):
    result = fetch(private_api, fetch_cell, f"{origin}/redirect?to=/text", save_to="r.txt").json()
    assert result["status"] == 200 and result["redirects"] == 1 and result["url"] == f"{origin}/text"


def test_a_redirect_to_a_denied_destination_is_refused(private_api, fetch_cell, origin):
    port = origin.rsplit(":", 1)[1]
    response = fetch(private_api, fetch_cell, f"{origin}/redirect?to=http://127.0.0.2:{port}/text")
    assert response.status_code == 403
    assert "127.0.0.2" in response.json()["error"] and "deny_out" in response.json()["error"]


def test_the_cells_deny_out_applies(private_api, fetch_cell, origin):
    response = fetch(private_api, fetch_cell, "http://files.denied.test/x")
    assert response.status_code == 403 and "*.denied.test" in response.json()["error"]


def test_an_unreachable_destination_is_an_error_in_the_result(private_api, fetch_cell):
    result = fetch(private_api, fetch_cell, "http://127.0.0.1:1/")
    assert result.status_code == 200
    assert result.json()["status"] == 0 and "could not reach" in result.json()["error"]


def test_timeout_secs_bounds_the_fetch(private_api, fetch_cell, origin):
    result = fetch(private_api, fetch_cell, f"{origin}/slow?s=5", timeout_secs=1, save_to="slow.txt").json()
    assert "within 1 s" in result["error"] and result["latency_ms"] < 4000


@pytest.mark.parametrize("save_to", ["../etc/passwd", "/etc/passwd", "/data"])
def test_save_to_must_stay_under_data(private_api, fetch_cell, origin, save_to):
    response = fetch(private_api, fetch_cell, f"{origin}/text", save_to=save_to)
    assert response.status_code == 400 and "under /data" in response.json()["error"]


@pytest.mark.parametrize(
    "url, reason",
    [
        ("http://127.0.0.1:8001/v1/health", "loopback"),
        ("http://localhost:8001/", "loopback"),
        ("http://10.0.0.1/", "private"),
        ("http://192.168.0.1/", "private"),
        ("http://169.254.169.254/latest/meta-data/", "metadata"),
        ("http://[::1]/", "loopback"),
        ("http://[fd00:ec2::254]/", "metadata"),
        ("http://0.0.0.0/", "unspecified"),
    ],
)
def test_the_guard_refuses_private_destinations_by_default(api, cell, url, reason):
    response = fetch(api, cell["cell_id"], url)
    assert response.status_code == 403, response.text
    assert reason in response.json()["error"] and response.json()["error_type"] == "destination_forbidden"


def test_only_http_and_https_can_be_fetched(api, cell):
    response = fetch(api, cell["cell_id"], "file:///etc/passwd")
    assert response.status_code == 400 and "only http and https" in response.json()["error"]


def test_fetch_into_another_tenants_cell_is_404(server, cell, origin):
    with server.client(server.new_key()) as other:
        assert fetch(other, cell["cell_id"], f"{origin}/text").status_code == 404


def test_the_published_client_reads_the_fetch_result(private_server, origin):
    from synapse.cell import Cell

    cell = Cell(api_url=private_server.url, api_key=private_server.key, timeout_ms=120_000)
    try:
        result = cell.fetch(f"{origin}/text", save_to="via-client.txt")
        assert result.ok and result.body == "héllo from the host\n" and result.content_type.startswith("text/plain")
        assert result.body_size == len(result.body.encode()) and result.error is None
        assert cell.command("cat /data/via-client.txt").stdout == "héllo from the host\n"
    finally:
        cell.kill()
