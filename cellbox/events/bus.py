"""Live events for SSE subscribers, per tenant, with bounded queues.

A subscriber that falls behind by a whole queue is dropped (its stream ends and
it can resume with ``Last-Event-ID``); publishing never waits for anyone.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..store.webhook_models import type_matches

_QUEUE_SIZE = 1000
# Put on a subscriber's queue to end its stream.
DROPPED = {"_end": "dropped: this stream fell too far behind; reconnect with Last-Event-ID"}
CLOSED = {"_end": "closed: the server is shutting down"}


class Subscription:
    def __init__(self, tenant_id: str, types: list[str] | None, cell_id: str | None, size: int) -> None:
        self.tenant_id = tenant_id
        self.types = types
        self.cell_id = cell_id
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(size)

    def wants(self, event: dict[str, Any]) -> bool:
        if self.cell_id is not None and event["cell_id"] != self.cell_id:
            return False
        return not self.types or type_matches(self.types, event["type"])

    def end(self, sentinel: dict[str, Any]) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(sentinel)


class EventBus:
    def __init__(self, queue_size: int = _QUEUE_SIZE) -> None:
        self.queue_size = queue_size
        self._subscribers: dict[str, set[Subscription]] = {}

    def subscribe(self, tenant_id: str, types: list[str] | None = None, cell_id: str | None = None) -> Subscription:
        subscription = Subscription(tenant_id, types, cell_id, self.queue_size)
        self._subscribers.setdefault(tenant_id, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscribers = self._subscribers.get(subscription.tenant_id)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[subscription.tenant_id]

    def publish(self, tenant_id: str, event: dict[str, Any]) -> None:
        for subscription in list(self._subscribers.get(tenant_id, ())):
            if not subscription.wants(event):
                continue
            try:
                subscription.queue.put_nowait(event)
            except asyncio.QueueFull:
                self.unsubscribe(subscription)
                subscription.end(DROPPED)

    def close(self) -> None:
        for subscribers in list(self._subscribers.values()):
            for subscription in list(subscribers):
                self.unsubscribe(subscription)
                subscription.end(CLOSED)

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())
