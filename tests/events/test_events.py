"""Lifecycle events: stored, listed per tenant and per cell, streamed live over SSE."""

from __future__ import annotations

import json
import time
from datetime import datetime

import httpx


def cell_events(api, cell_id: str, **params: object) -> list[dict]:
    response = api.get(f"/v1/cells/{cell_id}/events", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def wait_for_types(api, cell_id: str, count: int, timeout: float = 15) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events = cell_events(api, cell_id)
        if len(events) >= count:
            return [e["type"] for e in reversed(events)]
        time.sleep(0.1)
    raise AssertionError(f"only {cell_events(api, cell_id)}")


def test_a_killed_cell_has_created_then_killed_with_the_reason(api, cells):
    cell_id = cells()["cell_id"]
    api.delete(f"/v1/cells/{cell_id}")
    events = cell_events(api, cell_id)
    assert [e["type"] for e in events] == ["cell.killed", "cell.created"]  # newest first
    killed, created = events
    assert killed["data"]["reason"] == "request" and killed["data"]["detail"] == "killed by request"
    assert created["data"]["template"] == "python3"
    assert killed["id"] > created["id"] and killed["timestamp_ms"] >= created["timestamp_ms"]
    for event in events:
        assert set(event) == {"id", "type", "cell_id", "timestamp", "timestamp_ms", "data"}
        assert event["cell_id"] == cell_id
        assert abs(datetime.fromisoformat(event["timestamp"]).timestamp() * 1000 - event["timestamp_ms"]) < 1


def test_a_timed_out_cell_records_timeout_then_killed(api, cells):
    cell_id = cells()["cell_id"]
    assert api.put(f"/v1/cells/{cell_id}/timeout", json={"timeout": 1}).status_code == 200
    assert wait_for_types(api, cell_id, 3) == ["cell.created", "cell.timeout", "cell.killed"]
    assert cell_events(api, cell_id, type="cell.killed")[0]["data"]["reason"] == "timeout"


def test_the_tenant_list_is_newest_first_filtered_and_paged(api, cells):
    first, second = cells()["cell_id"], cells()["cell_id"]
    events = api.get("/v1/events").json()
    ids = [e["id"] for e in events]
    assert ids == sorted(ids, reverse=True) and len(events) <= 100
    mine = [e["cell_id"] for e in events if e["type"] == "cell.created"]
    assert mine.index(second) < mine.index(first)
    assert all(e["type"] == "cell.created" for e in api.get("/v1/events", params={"type": "cell.created"}).json())
    assert len(api.get("/v1/events", params={"limit": 1}).json()) == 1
    # since: what came after an event, so a poller never skips one
    created_first = next(e for e in events if e["cell_id"] == first and e["type"] == "cell.created")
    after = api.get("/v1/events", params={"since": created_first["id"]}).json()
    assert all(e["id"] > created_first["id"] for e in after)
    assert any(e["cell_id"] == second for e in after) and all(e["cell_id"] != first or e["type"] != "cell.created" for e in after)


def test_an_unknown_type_filter_is_refused(api):
    response = api.get("/v1/events", params={"type": "cell.exploded"})
    assert response.status_code == 400 and "cell.exploded" in response.json()["error"]


def test_events_are_private_to_their_tenant(server, api, cell):
    with server.client(server.new_key()) as other:
        assert other.get(f"/v1/cells/{cell['cell_id']}/events").status_code == 404
        assert all(e["cell_id"] != cell["cell_id"] for e in other.get("/v1/events").json())


def test_the_stream_delivers_events_as_they_happen(server, api, cells):
    with httpx.Client(base_url=server.url, headers=api.headers, timeout=httpx.Timeout(10)) as client:
        with client.stream("GET", "/v1/events/stream", params={"type": "cell.*"}) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.iter_lines()
            assert next(lines) == ": connected"
            cell_id = cells()["cell_id"]
            for line in lines:
                if line.startswith("data: "):
                    event = json.loads(line.removeprefix("data: "))
                    if event["cell_id"] == cell_id:
                        break
            assert event["type"] == "cell.created"


def test_the_stream_sends_heartbeats_and_only_the_tenants_events(hook_server, hook_api, hook_cells):
    other_key = hook_server.new_key()
    with httpx.Client(base_url=hook_server.url, headers={"Authorization": f"Bearer {other_key}"},
                      timeout=httpx.Timeout(10)) as client:
        with client.stream("GET", "/v1/events/stream") as stream:
            lines = stream.iter_lines()
            assert next(lines) == ": connected"
            hook_cells()
            seen = []
            for line in lines:
                seen.append(line)
                if line == ": heartbeat" and len([s for s in seen if s == ": heartbeat"]) >= 2:
                    break
    assert not any(s.startswith("data:") for s in seen)  # the other tenant's cell.created never shows


def test_the_stream_resumes_after_last_event_id(server, api, cells):
    cell_id = cells()["cell_id"]
    api.delete(f"/v1/cells/{cell_id}")
    created = cell_events(api, cell_id, type="cell.created")[0]
    with httpx.Client(base_url=server.url, headers={**api.headers, "Last-Event-ID": created["id"]},
                      timeout=httpx.Timeout(10)) as client:
        with client.stream("GET", "/v1/events/stream", params={"cell_id": cell_id}) as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    assert json.loads(line.removeprefix("data: "))["type"] == "cell.killed"
                    break
