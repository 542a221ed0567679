"""Webhooks: signed per Standard Webhooks, retried from a stored outbox, private to their tenant."""

from __future__ import annotations

import base64
import json
import signal
import time

import pytest
from standardwebhooks.webhooks import Webhook

from tests.events.conftest import WEBHOOK_ENV, Receiver


def register(api, url: str, events: list[str] | None = None, **extra: object) -> dict:
    response = api.post("/v1/webhooks", json={"url": url, **({"events": events} if events else {}), **extra})
    assert response.status_code == 201, response.text
    return response.json()


def deliveries(api, webhook_id: str) -> list[dict]:
    response = api.get(f"/v1/webhooks/{webhook_id}/deliveries")
    assert response.status_code == 200, response.text
    return response.json()


def wait_for_deliveries(api, webhook_id: str, check, timeout: float = 15) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = deliveries(api, webhook_id)
        if check(got):
            return got
        time.sleep(0.1)
    raise AssertionError(f"deliveries: {deliveries(api, webhook_id)}")


def test_the_secret_is_shown_once_and_never_listed(hook_api, receiver):
    hook = register(hook_api, f"{receiver.url}/listed", ["cell.created"], description="for the dashboard")
    assert hook["secret"].startswith("whsec_") and hook["webhook_id"].startswith("wh_")
    assert hook["events"] == ["cell.created"] and hook["description"] == "for the dashboard"
    listed = {h["webhook_id"]: h for h in hook_api.get("/v1/webhooks").json()}
    assert "secret" not in listed[hook["webhook_id"]]
    assert "secret" not in hook_api.get(f"/v1/webhooks/{hook['webhook_id']}").json()


def test_a_caller_may_bring_its_own_standard_secret(hook_api, receiver):
    own = "whsec_" + base64.b64encode(b"k" * 32).decode()
    assert register(hook_api, f"{receiver.url}/own", ["cell.killed"], secret=own)["secret"] == own
    response = hook_api.post("/v1/webhooks", json={"url": f"{receiver.url}/own", "secret": "hunter2"})
    assert response.status_code == 400 and "whsec_" in response.json()["error"]


def test_events_are_posted_signed_so_standardwebhooks_verifies_them(hook_api, hook_cells, receiver):
    hook = register(hook_api, f"{receiver.url}/signed")
    cell_id = hook_cells()["cell_id"]
    got = receiver.wait_for("/signed", lambda r: any(json.loads(x["body"])["cell_id"] == cell_id for x in r))
    request = next(x for x in got if json.loads(x["body"])["cell_id"] == cell_id)
    payload = Webhook(hook["secret"]).verify(request["body"], request["headers"])
    assert payload["type"] == "cell.created" and payload["id"].startswith("evt_")
    assert request["headers"]["content-type"] == "application/json"
    with pytest.raises(Exception):
        Webhook("whsec_" + "A" * 43 + "=").verify(request["body"], request["headers"])


def test_only_the_chosen_event_types_are_sent(hook_api, hook_cells, receiver):
    hook = register(hook_api, f"{receiver.url}/killed-only", ["cell.killed"])
    cell_id = hook_cells()["cell_id"]
    hook_api.delete(f"/v1/cells/{cell_id}")
    got = receiver.wait_for("/killed-only", lambda r: len(r) >= 1)
    time.sleep(0.3)
    assert [json.loads(r["body"])["type"] for r in receiver.at("/killed-only")] == ["cell.killed"]
    assert [d["event_type"] for d in deliveries(hook_api, hook["webhook_id"])] == ["cell.killed"]
    assert json.loads(got[0]["body"])["data"]["reason"] == "request"


def test_a_failing_receiver_is_retried_until_it_succeeds(hook_api, hook_cells, receiver):
    receiver.plans["/flaky"] = [500, 503]
    hook = register(hook_api, f"{receiver.url}/flaky", ["cell.created"])
    hook_cells()
    done = wait_for_deliveries(hook_api, hook["webhook_id"], lambda d: d and d[0]["state"] == "delivered")
    delivery = done[0]
    assert delivery["attempt_count"] == 3
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 503, 200]
    assert delivery["attempts"][0]["error"] == "the receiver answered 500" and delivery["attempts"][2]["error"] is None
    sent = receiver.at("/flaky")
    assert len({r["headers"]["webhook-id"] for r in sent}) == 1 and sent[0]["headers"]["webhook-id"] == delivery["delivery_id"]
    gaps = [b["at"] - a["at"] for a, b in zip(sent, sent[1:])]
    assert gaps[0] >= 0.1 and gaps[1] >= gaps[0] * 0.9  # backoff (0.2 s base, doubling, half jittered)


def test_a_receiver_that_never_succeeds_is_marked_failed(hook_api, hook_cells, receiver):
    receiver.plans["/down"] = [500] * 10
    hook = register(hook_api, f"{receiver.url}/down", ["cell.created"])
    hook_cells()
    done = wait_for_deliveries(hook_api, hook["webhook_id"], lambda d: d and d[0]["state"] == "failed")
    assert done[0]["attempt_count"] == int(WEBHOOK_ENV["CELLBOX_WEBHOOK_MAX_ATTEMPTS"])


def test_a_slow_receiver_does_not_delay_others(hook_api, hook_cells, receiver):
    slow = Receiver()
    try:
        # A receiver that never answers: each attempt waits out the 2 s timeout.
        slow.httpd.RequestHandlerClass.do_POST = lambda self: time.sleep(30)  # type: ignore[method-assign]
        register(hook_api, f"{slow.url}/slow", ["cell.created"])
        register(hook_api, f"{receiver.url}/fast", ["cell.created"])
        for _ in range(2):
            hook_cells()
        started = time.monotonic()
        receiver.wait_for("/fast", lambda r: len(r) >= 2, timeout=5)
        assert time.monotonic() - started < 1.5
    finally:
        for hook in hook_api.get("/v1/webhooks").json():
            if hook["url"].startswith(slow.url):
                hook_api.delete(f"/v1/webhooks/{hook['webhook_id']}")
        slow.close()


def test_deleting_a_webhook_stops_its_deliveries(hook_api, hook_cells, receiver):
    receiver.plans["/deleted"] = [500] * 10
    hook = register(hook_api, f"{receiver.url}/deleted", ["cell.created"])
    hook_cells()
    receiver.wait_for("/deleted", lambda r: len(r) >= 1)
    assert hook_api.delete(f"/v1/webhooks/{hook['webhook_id']}").status_code == 204
    seen = len(receiver.at("/deleted"))
    time.sleep(2)  # past the whole retry schedule
    assert len(receiver.at("/deleted")) <= seen + 1  # at most the attempt in flight at the delete
    assert hook_api.get(f"/v1/webhooks/{hook['webhook_id']}/deliveries").status_code == 404
    assert all(h["webhook_id"] != hook["webhook_id"] for h in hook_api.get("/v1/webhooks").json())


def test_webhooks_are_private_to_their_tenant(hook_server, hook_api, hook_cells, receiver):
    hook = register(hook_api, f"{receiver.url}/mine", ["*"])
    with hook_server.client(hook_server.new_key()) as other:
        assert all(h["webhook_id"] != hook["webhook_id"] for h in other.get("/v1/webhooks").json())
        for method, path in [("GET", ""), ("DELETE", ""), ("GET", "/deliveries")]:
            assert other.request(method, f"/v1/webhooks/{hook['webhook_id']}{path}").status_code == 404
        register(other, f"{receiver.url}/theirs", ["*"])
    cell_id = hook_cells()["cell_id"]
    receiver.wait_for("/mine", lambda r: any(json.loads(x["body"])["cell_id"] == cell_id for x in r))
    time.sleep(0.3)
    assert all(json.loads(x["body"])["cell_id"] != cell_id for x in receiver.at("/theirs"))


@pytest.mark.parametrize("events", [["cell.exploded"], []])
def test_unknown_event_types_are_refused(hook_api, receiver, events):
    assert hook_api.post("/v1/webhooks", json={"url": receiver.url, "events": events}).status_code == 400


def test_webhook_urls_pass_the_guard(api, hook_api):
    # The default server refuses loopback; even a server allowing private ones refuses metadata.
    response = api.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook"})
    assert response.status_code == 403 and "CELLBOX_WEBHOOK_ALLOW_PRIVATE" in response.json()["error"]
    response = hook_api.post("/v1/webhooks", json={"url": "http://169.254.169.254/hook"})
    assert response.status_code == 403 and "metadata" in response.json()["error"]
    assert hook_api.post("/v1/webhooks", json={"url": "ftp://example.com/"}).status_code == 400


def test_pending_deliveries_survive_a_server_crash(make_server, receiver):
    receiver.plans["/restart"] = [500] * 3
    env = {**WEBHOOK_ENV, "CELLBOX_WEBHOOK_RETRY_BASE_S": "1", "CELLBOX_WEBHOOK_MAX_ATTEMPTS": "8"}
    first = make_server(env)
    with first.client() as api:
        hook = register(api, f"{receiver.url}/restart", ["cell.created", "cell.killed"])
        cell_id = api.post("/v1/cells", json={}).json()["cell_id"]
        api.delete(f"/v1/cells/{cell_id}")
        receiver.wait_for("/restart", lambda r: len(r) >= 2)
    first.stop(signal.SIGKILL)
    receiver.plans["/restart"] = []
    second = make_server(env, data_dir=first.data_dir)
    with second.client(first.key) as api:
        done = wait_for_deliveries(
            api, hook["webhook_id"], lambda d: len(d) == 2 and all(x["state"] == "delivered" for x in d), timeout=20
        )
    assert {d["event_type"] for d in done} == {"cell.created", "cell.killed"}
    bodies = [json.loads(r["body"]) for r in receiver.at("/restart")]
    assert {b["type"] for b in bodies} == {"cell.created", "cell.killed"}
