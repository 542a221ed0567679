"""The event log: every state change of a cell or template, stored, then published.

``EventLog.emit`` is the one way events enter the system; readers (the events API,
live streams, webhook delivery) hang off it.
"""

from __future__ import annotations

from typing import Any

from ..store import Event, Store


class EventLog:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def emit(self, tenant_id: str, cell_id: str | None, type: str, data: dict[str, Any]) -> Event:
        return await self.store.add_event(tenant_id, cell_id, type, data)
