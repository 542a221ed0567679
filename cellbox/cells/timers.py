"""Inactivity timers that cost nothing per activity.

Each cell has one event-loop timer set for its deadline. Activity only moves a
number; when the timer fires it re-reads the deadline and sleeps again if the cell
was active meanwhile. So a busy cell makes no timer churn, and nothing polls every
cell.
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable


class InactivityTimers:
    def __init__(self, deadline_of: Callable[[str], float | None], on_expire: Callable[[str], Awaitable[None]]):
        """``deadline_of(cell_id)``: wall-clock deadline now, or None when the cell needs no timer."""
        self._deadline_of = deadline_of
        self._on_expire = on_expire
        self._handles: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task] = set()

    def arm(self, cell_id: str) -> None:
        """(Re)schedule a cell's timer for its current deadline."""
        self.disarm(cell_id)
        deadline = self._deadline_of(cell_id)
        if deadline is None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, deadline - time.time())
        self._handles[cell_id] = loop.call_at(loop.time() + delay, self._fire, cell_id)

    def disarm(self, cell_id: str) -> None:
        handle = self._handles.pop(cell_id, None)
        if handle is not None:
            handle.cancel()

    def _fire(self, cell_id: str) -> None:
        self._handles.pop(cell_id, None)
        deadline = self._deadline_of(cell_id)
        if deadline is None:
            return
        if deadline > time.time():
            self.arm(cell_id)
            return
        task = asyncio.get_running_loop().create_task(self._on_expire(cell_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.cancel()
        self._handles.clear()
