"""Pure logic of events and webhooks: signing, backoff, type patterns, the live bus."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import datetime, timezone

from standardwebhooks.webhooks import Webhook

from cellbox.events import invalid_type_patterns
from cellbox.events.bus import DROPPED, EventBus
from cellbox.events.delivery import backoff
from cellbox.events.signing import new_secret, sign, signed_headers
from cellbox.store.webhook_models import type_matches


def test_signatures_verify_with_the_standardwebhooks_library():
    secret = new_secret()
    body = json.dumps({"type": "cell.created", "data": {"é": 1}}).encode()
    now = int(datetime.now(timezone.utc).timestamp())
    headers = signed_headers(secret, "msg_1", now, body)
    assert Webhook(secret).verify(body, headers)["type"] == "cell.created"
    assert sign(secret, "msg_1", now, body) == Webhook(secret).sign("msg_1", datetime.fromtimestamp(now, timezone.utc), body)


def test_secrets_are_whsec_and_at_least_24_random_bytes():
    secrets = {new_secret() for _ in range(10)}
    assert len(secrets) == 10
    for secret in secrets:
        assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) >= 24


def test_backoff_doubles_with_jitter_and_is_capped():
    for attempts in range(1, 6):
        full = 5 * 2 ** (attempts - 1)
        delays = [backoff(5, attempts) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in delays)
        assert len(set(delays)) > 1
    assert backoff(5, 40) <= 3600


def test_type_patterns():
    assert type_matches(["*"], "template.build_failed")
    assert type_matches(["cell.*"], "cell.killed") and not type_matches(["cell.*"], "template.build_failed")
    assert type_matches(["cell.killed", "cell.paused"], "cell.paused") and not type_matches(["cell.killed"], "cell.created")
    assert invalid_type_patterns(["*", "cell.*", "template.build_succeeded", "cell.killed"]) == []
    assert invalid_type_patterns(["cell.kill", "nope.*", ""]) == ["cell.kill", "nope.*", ""]


def _event(n: int, cell_id: str = "cell-a", type: str = "cell.created") -> dict:
    return {"id": f"evt_{n:04d}", "type": type, "cell_id": cell_id}


def test_the_bus_delivers_per_tenant_and_filter():
    async def run():
        bus = EventBus()
        mine = bus.subscribe("t1", ["cell.killed"])
        other = bus.subscribe("t2")
        one_cell = bus.subscribe("t1", cell_id="cell-b")
        bus.publish("t1", _event(1))
        bus.publish("t1", _event(2, type="cell.killed"))
        bus.publish("t1", _event(3, cell_id="cell-b"))
        return mine.queue, other.queue, one_cell.queue

    mine, other, one_cell = asyncio.run(run())
    assert [mine.get_nowait()["id"]] == ["evt_0002"] and mine.empty()
    assert other.empty()
    assert one_cell.get_nowait()["id"] == "evt_0003" and one_cell.empty()


def test_a_subscriber_that_falls_behind_is_dropped_not_waited_for():
    async def run():
        bus = EventBus(queue_size=3)
        slow = bus.subscribe("t1")
        fast = bus.subscribe("t1")
        for n in range(4):
            bus.publish("t1", _event(n))
            while not fast.queue.empty():
                fast.queue.get_nowait()
        return bus, slow

    bus, slow = asyncio.run(run())
    assert slow.queue.get_nowait() is DROPPED and slow.queue.empty()
    assert bus.subscriber_count == 1
