"""The event log: every state change of a cell or template, stored, then published.

``EventLog.emit`` is the one way events enter the system. It stores the event
together with its webhook deliveries (one transaction: the outbox), then hands it
to live subscribers (``bus``) and wakes the delivery worker.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime, timezone
from typing import Any

from ..store import Event, Store, new_event_id
from .bus import EventBus

__all__ = ["EVENT_TYPES", "EventBus", "EventLog", "event_body", "invalid_type_patterns"]

EVENT_TYPES = (
    "cell.created",
    "cell.paused",
    "cell.resumed",
    "cell.timeout",
    "cell.killed",
    "cell.snapshot_created",
    "cell.restored",
    "template.build_succeeded",
    "template.build_failed",
)


def event_body(event: Event) -> dict[str, Any]:
    """An event as the API, the live stream and webhooks show it."""
    return {
        "id": event.id,
        "type": event.type,
        "cell_id": event.cell_id,
        "timestamp": datetime.fromtimestamp(event.timestamp, timezone.utc).isoformat(timespec="milliseconds"),
        "timestamp_ms": int(event.timestamp * 1000),
        "data": event.data,
    }


def invalid_type_patterns(patterns: list[str]) -> list[str]:
    """Patterns that match no event type: ``*``, a known type or ``prefix.*`` are valid."""
    prefixes = {t.split(".", 1)[0] + "." for t in EVENT_TYPES}
    return [p for p in patterns if not (p == "*" or p in EVENT_TYPES or (p.endswith(".*") and p[:-1] in prefixes))]


class EventLog:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.bus = EventBus()
        # Set when deliveries were queued; the webhook worker waits on it.
        self.deliveries_queued = asyncio.Event()

    async def emit(self, tenant_id: str, cell_id: str | None, type: str, data: dict[str, Any]) -> Event:
        event = Event(
            id=new_event_id(), tenant_id=tenant_id, cell_id=cell_id, type=type, timestamp=time.time(), data=data
        )
        body = event_body(event)
        queued = await self.store.record_event(event, json.dumps(body, separators=(",", ":")))
        self.bus.publish(tenant_id, body)
        if queued:
            self.deliveries_queued.set()
        return event
