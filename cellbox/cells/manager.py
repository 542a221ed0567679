"""The cell manager owns every state change: it starts, adopts, times out and kills.

Each change goes through ``_transition``: checked against the state machine,
recorded in the store, and emitted as an event, so every end of a cell has a
reason that its info and its events show.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

from ..config import Config
from ..errors import ApiError, bad_request
from ..events import EventLog
from ..runtime import CellRuntimeError, CellSpec, Limits, Runtime
from ..store import Cell, Store
from .agent import AgentClient
from .state import LIVE_STATES, CellState, check_transition
from .timers import InactivityTimers

log = logging.getLogger("cellbox.cells")

BUILTIN_TEMPLATES = {"python3": "python", "javascript": "javascript"}
_AGENT_READY_TIMEOUT_S = 15.0
_FLUSH_INTERVAL_S = 15.0

# Why cells end, as recorded in end_reason and in the cell.killed event's data.
REASON_REQUEST = "request"
REASON_TIMEOUT = "timeout"
REASON_ERROR = "error"
REASON_SERVER = "server"


@dataclass
class LiveCell:
    record: Cell
    agent: AgentClient
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # Operations in progress (executions, foreground commands, client streams): while
    # any runs, the cell is active and its inactivity timer cannot fire.
    busy: int = 0
    dirty: bool = False


class CellManager:
    def __init__(self, config: Config, store: Store, runtime: Runtime, events: EventLog) -> None:
        self.config = config
        self.store = store
        self.runtime = runtime
        self.events = events
        self.live: dict[str, LiveCell] = {}
        self.timers = InactivityTimers(self._deadline, self._expire)
        self._background: list[asyncio.Task] = []

    # -- start and stop ------------------------------------------------------------

    async def start(self) -> None:
        await self.runtime.check()
        self.runtime.prepare()  # type: ignore[attr-defined]
        await self.reconcile()
        self._background = [
            asyncio.create_task(self._every(_FLUSH_INTERVAL_S, self.flush)),
            asyncio.create_task(self._every(min(3600.0, max(1.0, self.config.retention_s / 4)), self.purge)),
        ]

    async def shutdown(self) -> None:
        """Stop managing; the cells keep running and the next server adopts them."""
        for task in self._background:
            task.cancel()
        self.timers.close()
        await self.flush()
        for live in self.live.values():
            await live.agent.close()
        self.live.clear()

    async def _every(self, interval: float, job: Any) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await job()
            except Exception:
                log.exception("background job %s failed", job.__name__)

    async def reconcile(self) -> None:
        """Adopt the containers that outlived the last server; account for those that did not."""
        containers = await self.runtime.list_cells()
        records = await self.store.cells_in_states(LIVE_STATES)
        known = {r.id for r in records}
        for record in records:
            status = containers.get(record.id)
            if record.state == CellState.CREATING.value:
                await self.runtime.destroy(record.id)
                await self._record_end(record, REASON_SERVER, "the server stopped while the cell was being created")
            elif status in ("running", "paused") and await self._adopt(record):
                log.info("adopted cell %s (%s)", record.id, status)
            else:
                await self.runtime.destroy(record.id)
                await self._record_end(
                    record, REASON_SERVER,
                    "its container was gone when the server started (host restart or runtime failure)",
                )
        for orphan in set(containers) - known:
            log.warning("removing container %s that no cell record owns", orphan)
            await self.runtime.destroy(orphan)

    async def _adopt(self, record: Cell) -> bool:
        live = LiveCell(record, AgentClient(self.runtime.agent_socket(record.id)))
        try:
            await live.agent.request("GET", "/health", timeout=5)
        except ApiError:
            await live.agent.close()
            return False
        # A restart must never make a cell end earlier than its timeout promised.
        record.last_activity = max(record.last_activity, time.time())
        self.live[record.id] = live
        self.timers.arm(record.id)
        return True

    # -- reading -------------------------------------------------------------------

    async def get(self, tenant_id: str, cell_id: str) -> Cell:
        live = self.live.get(cell_id)
        record = live.record if live is not None else await self.store.get_cell(cell_id)
        if record is None or record.tenant_id != tenant_id:
            raise ApiError(
                404,
                f"cell {cell_id!r} not found: it never existed for this API key, or it ended more than "
                f"{self.config.retention_s / 3600:g} h ago and its record expired",
                "not_found",
            )
        return record

    async def running(self, tenant_id: str, cell_id: str) -> LiveCell:
        """The live cell, ready for work; a clear error when it cannot take any."""
        record = await self.get(tenant_id, cell_id)
        if record.state == CellState.KILLED.value:
            raise ApiError(
                404,
                f"cell {cell_id!r} has ended ({record.end_reason}); create a new cell",
                "cell_killed",
            )
        if record.state == CellState.PAUSED.value:
            raise ApiError(409, f"cell {cell_id!r} is paused; resume it first (POST /v1/cells/{cell_id}/resume)", "cell_paused")
        live = self.live.get(cell_id)
        if live is None or record.state != CellState.RUNNING.value:
            raise ApiError(409, f"cell {cell_id!r} is {record.state}; try again in a moment", "cell_not_ready")
        return live

    # -- life cycle ----------------------------------------------------------------------

    def _limits(self, request: Any) -> Limits:
        default, maximum = self.config.default_limits, self.config.max_limits
        values = {}
        for name in ("memory_mb", "cpu_count", "pids", "disk_mb"):
            value = getattr(request, name, None)
            if value is None:
                value = getattr(default, name)
            if value > getattr(maximum, name):
                raise bad_request(f"{name} {value} is above this server's maximum of {getattr(maximum, name)}")
            values[name] = value
        return Limits(**values)

    def _refuse_unsupported(self, request: Any) -> None:
        if request.allow_internet_access:
            raise bad_request(
                "allow_internet_access=true is not available: cells on this server have no network yet. "
                "Pass allow_internet_access=false, and use POST /v1/cells/{id}/fetch to bring data in"
            )
        network = request.network
        if network is not None and (network.allow_out or network.allow_public_traffic):
            raise bad_request(
                "network.allow_out and network.allow_public_traffic are not available: cells on this server "
                "have no network yet"
            )
        if request.volume_id or request.volume_mounts:
            raise bad_request("volumes are not available on this server yet; omit volume_id and volume_mounts")
        if request.lifecycle is not None and request.lifecycle.on_timeout == "pause":
            raise bad_request('lifecycle.on_timeout="pause" is not available yet; use "kill"')

    async def create(self, tenant_id: str, request: Any) -> Cell:
        if request.template not in BUILTIN_TEMPLATES:
            raise bad_request(
                f"unknown template {request.template!r}; available: {', '.join(sorted(BUILTIN_TEMPLATES))}"
            )
        self._refuse_unsupported(request)
        limits = self._limits(request)
        now = time.time()
        timeout_s = request.timeout_ms / 1000 if request.timeout_ms else self.config.default_timeout_s
        record = Cell(
            id=f"cell-{secrets.token_hex(8)}",
            tenant_id=tenant_id,
            template=request.template,
            state=CellState.CREATING.value,
            created_at=now,
            started_at=now,
            last_activity=now,
            timeout_s=timeout_s,
            persistent=request.persistent,
            secure=True if request.secure is None else request.secure,
            allow_internet_access=False,
            name=request.name,
            cell_metadata=dict(request.metadata or {}),
            envs=dict(request.envs or {}),
            limits=limits.__dict__.copy(),
            lifecycle=(request.lifecycle.model_dump() if request.lifecycle else {"on_timeout": "kill", "auto_resume": False}),
            network=(request.network.model_dump(exclude_none=True) if request.network else {}),
            executions=0,
            runtime=self.runtime.name,
        )
        await self.store.add_cell(record)
        live = LiveCell(record, AgentClient(self.runtime.agent_socket(record.id)))
        self.live[record.id] = live
        try:
            await self.runtime.start(CellSpec(record.id, limits, dict(record.envs)))
            await self._wait_for_agent(live)
        except (CellRuntimeError, ApiError) as exc:
            log.warning("cell %s failed to start: %s", record.id, exc)
            await self._end(record.id, REASON_ERROR, f"failed to start: {exc}")
            raise ApiError(500, f"the cell could not be started: {exc}", "cell_start_failed") from exc
        record.started_at = record.last_activity = time.time()
        await self._transition(record, CellState.RUNNING, "cell.created", {"template": record.template})
        self.timers.arm(record.id)
        return record

    async def _wait_for_agent(self, live: LiveCell) -> None:
        try:
            await live.agent.request("GET", "/health", timeout=_AGENT_READY_TIMEOUT_S)
        except ApiError as exc:
            log_tail = self.runtime.startup_log(live.record.id)  # type: ignore[attr-defined]
            raise CellRuntimeError(f"the agent did not come up: {exc.error}; log: {log_tail[-1000:]}") from exc

    async def kill(self, tenant_id: str, cell_id: str) -> Cell:
        record = await self.get(tenant_id, cell_id)
        if record.state != CellState.KILLED.value:
            await self._end(cell_id, REASON_REQUEST, "killed by request")
        return record

    async def _end(self, cell_id: str, reason: str, detail: str) -> None:
        live = self.live.get(cell_id)
        if live is None:
            return
        async with live.lock:
            if live.record.state == CellState.KILLED.value:
                return
            self.timers.disarm(cell_id)
            try:
                await self.runtime.destroy(cell_id)
            finally:
                self.live.pop(cell_id, None)
                await live.agent.close()
                await self._record_end(live.record, reason, detail)

    async def _record_end(self, record: Cell, reason: str, detail: str) -> None:
        record.ended_at = time.time()
        record.end_reason = detail
        await self._transition(
            record, CellState.KILLED, "cell.killed", {"reason": reason, "detail": detail},
            ended_at=record.ended_at, end_reason=detail,
        )

    async def _transition(self, record: Cell, new: CellState, event: str, data: dict, **fields: Any) -> None:
        check_transition(record.state, new)
        record.state = new.value
        await self.store.update_cell(
            record.id, state=new.value, last_activity=record.last_activity, started_at=record.started_at,
            executions=record.executions, **fields,
        )
        await self.events.emit(record.tenant_id, record.id, event, data)

    # -- inactivity ----------------------------------------------------------------------

    def _deadline(self, cell_id: str) -> float | None:
        live = self.live.get(cell_id)
        if live is None or live.record.state != CellState.RUNNING.value:
            return None
        if live.busy:
            return time.time() + live.record.timeout_s
        return live.record.last_activity + live.record.timeout_s

    async def _expire(self, cell_id: str) -> None:
        live = self.live.get(cell_id)
        if live is None:
            return
        timeout = live.record.timeout_s
        await self.events.emit(live.record.tenant_id, cell_id, "cell.timeout", {"timeout_s": timeout})
        await self._end(cell_id, REASON_TIMEOUT, f"inactive for {timeout:g} s (its timeout)")

    def touch(self, live: LiveCell) -> None:
        live.record.last_activity = time.time()
        live.dirty = True

    @contextlib.asynccontextmanager
    async def activity(self, live: LiveCell) -> AsyncIterator[None]:
        """Marks an operation in progress: the cell cannot time out until it ends."""
        live.busy += 1
        self.touch(live)
        try:
            yield
        finally:
            live.busy -= 1
            self.touch(live)

    async def set_timeout(self, tenant_id: str, cell_id: str, seconds: float) -> Cell:
        live = await self.running(tenant_id, cell_id)
        live.record.timeout_s = seconds
        self.touch(live)
        await self.store.update_cell(cell_id, timeout_s=seconds, last_activity=live.record.last_activity)
        self.timers.arm(cell_id)
        return live.record

    async def refresh(self, tenant_id: str, cell_id: str) -> Cell:
        live = await self.running(tenant_id, cell_id)
        self.touch(live)
        return live.record

    # -- metadata and envs ------------------------------------------------------------------

    async def patch_map(self, tenant_id: str, cell_id: str, column: str, patch: dict[str, str]) -> dict[str, str]:
        record = await self.get(tenant_id, cell_id)
        if record.state == CellState.KILLED.value:
            raise ApiError(404, f"cell {cell_id!r} has ended ({record.end_reason})", "cell_killed")
        merged = {**getattr(record, column), **patch}
        setattr(record, column, merged)
        await self.store.update_cell(cell_id, **{column: merged})
        if cell_id in self.live:
            self.touch(self.live[cell_id])
        return merged

    # -- housekeeping -------------------------------------------------------------------------

    async def flush(self) -> None:
        """Write activity times kept in memory (activity is too frequent to write each time)."""
        for live in list(self.live.values()):
            if live.dirty:
                live.dirty = False
                await self.store.update_cell(
                    live.record.id, last_activity=live.record.last_activity, executions=live.record.executions
                )

    async def purge(self) -> None:
        purged = await self.store.purge_cells(time.time() - self.config.retention_s)
        if purged:
            log.info("purged %d killed cells past retention", len(purged))
