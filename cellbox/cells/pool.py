"""The warm pool: cells started ahead of time, so a create is a hand-over, not a start.

A pooled cell is a running container with default limits, its agent answering and
its Python kernel started. It has no record yet: creating a cell with the built-in
templates and default limits takes one and records it under the id it already
has. A cell's variables (envs) are given with every command, execution and
terminal, so a pooled container needs none of its own. Pooled cells do not outlive
the server: it removes them when it stops, and removes leftovers when it starts.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass

from ..runtime import CellSpec, Limits, Runtime, id_base
from .agent import AgentClient

log = logging.getLogger("cellbox.pool")

_RETRY_AFTER_FAILURE_S = 5.0


def new_cell_id() -> str:
    return f"cell-{secrets.token_hex(8)}"


@dataclass
class WarmCell:
    cell_id: str
    agent: AgentClient
    id_slot: int


class WarmPool:
    def __init__(self, runtime: Runtime, limits: Limits, size: int, slots: "IdSlots") -> None:
        self.runtime = runtime
        self.slots = slots
        self.limits = limits
        self.size = size
        self.ready: list[WarmCell] = []
        self._starting = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self.size > 0:
            self._task = asyncio.create_task(self._fill_forever())

    def take(self, limits: Limits) -> WarmCell | None:
        """A ready cell for a create with these limits, if the pool has one."""
        if limits != self.limits or not self.ready:
            return None
        cell = self.ready.pop(0)
        self._wake.set()
        return cell

    async def _fill_forever(self) -> None:
        while True:
            self._wake.clear()
            while len(self.ready) + self._starting < self.size:
                self._starting += 1
                try:
                    self.ready.append(await self._start_one())
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("could not start a warm cell (%s); trying again in %g s", exc, _RETRY_AFTER_FAILURE_S)
                    await asyncio.sleep(_RETRY_AFTER_FAILURE_S)
                finally:
                    self._starting -= 1
            await self._wake.wait()

    async def _start_one(self) -> WarmCell:
        cell_id = new_cell_id()
        slot = self.slots.take()
        try:
            await self.runtime.start(CellSpec(cell_id, self.limits, {}, id_base=id_base(slot)))
        except BaseException:
            self.slots.give_back(slot)
            raise
        agent = AgentClient(self.runtime.agent_socket(cell_id))
        try:
            await agent.request("GET", "/health", timeout=15)
            # Start the Python kernel now, so the first execution does not wait for it.
            await agent.request("POST", "/kernels/python", timeout=30)
        except BaseException:
            await agent.close()
            await self.runtime.destroy(cell_id)
            self.slots.give_back(slot)
            raise
        return WarmCell(cell_id, agent, slot)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for cell in self.ready:
            await cell.agent.close()
            await self.runtime.destroy(cell.cell_id)
            self.slots.give_back(cell.id_slot)
        self.ready.clear()


class IdSlots:
    """Which host id ranges are taken by cells (and warm cells); slot 0 is for builds."""

    def __init__(self) -> None:
        self._taken: set[int] = set()

    def mark(self, slot: int) -> None:
        self._taken.add(slot)

    def take(self) -> int:
        slot = 1
        while slot in self._taken:
            slot += 1
        self._taken.add(slot)
        return slot

    def give_back(self, slot: int) -> None:
        self._taken.discard(slot)
