"""The cell manager owns every state change: it starts, adopts, times out and kills.

Each change goes through ``_transition``: checked against the state machine,
recorded in the store, and emitted as an event, so every end of a cell has a
reason that its info and its events show.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

from ..config import Config
from ..errors import ApiError, bad_request
from ..events import EventLog
from ..metrics import Meters
from ..runtime import CellRuntimeError, CellSpec, Limits, Runtime, archive, cgroups, id_base
from ..store import Cell, Snapshot, Store
from ..templates import Launch, TemplateRegistry
from . import snapshots
from .agent import AgentClient
from .pool import IdSlots, WarmPool, new_cell_id
from .state import LIVE_STATES, CellState, check_transition
from .timers import InactivityTimers

log = logging.getLogger("cellbox.cells")

BUILTIN_TEMPLATES = {"python3": "python", "javascript": "javascript"}
_AGENT_READY_TIMEOUT_S = 15.0
_FLUSH_INTERVAL_S = 15.0
_LIVENESS_INTERVAL_S = 5.0

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
    # Of those, the ones a pause waits for (not open-ended client streams).
    inflight: int = 0
    pausing: bool = False
    dirty: bool = False
    template_runtime: str | None = None
    # Blocking executions in progress (see api/execution.py: a client's retry joins one).
    blocking: set = field(default_factory=set)


class CellManager:
    def __init__(
        self, config: Config, store: Store, runtime: Runtime, events: EventLog,
        templates: TemplateRegistry | None = None, meters: Meters | None = None,
    ) -> None:
        self.config = config
        self.meters = meters or Meters(store)
        self.slots = IdSlots()
        self.pool = WarmPool(runtime, config.default_limits, config.pool_size, self.slots)
        self.templates = templates
        self.store = store
        self.runtime = runtime
        self.events = events
        self.live: dict[str, LiveCell] = {}
        self.timers = InactivityTimers(self._deadline, self._expire)
        self._background: list[asyncio.Task] = []
        # Work that must finish even when its client has gone (executions, mostly).
        self.background_tasks: set[asyncio.Task] = set()

    # -- start and stop ------------------------------------------------------------

    async def start(self) -> None:
        await self.runtime.check()
        self.runtime.prepare()  # type: ignore[attr-defined]
        await self.reconcile()
        self.pool.start()  # after reconcile, which removes containers no record owns
        self._background = [
            asyncio.create_task(self._every(_FLUSH_INTERVAL_S, self.flush)),
            asyncio.create_task(self._every(_LIVENESS_INTERVAL_S, self.check_liveness)),
            asyncio.create_task(self._every(min(3600.0, max(1.0, self.config.retention_s / 4)), self.purge)),
        ]

    async def shutdown(self) -> None:
        """Stop managing; the cells keep running and the next server adopts them."""
        for task in self._background:
            task.cancel()
        await self.pool.close()
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
            elif status in ("running", "paused") and await self._adopt(record, status):
                log.info("adopted cell %s (%s)", record.id, status)
            elif await self.store.list_snapshots(record.id):
                # Its processes are gone but its files are not: it waits, paused, to be
                # restored from its latest snapshot when resumed.
                await self.runtime.destroy(record.id)
                await self._keep_as_evicted(record, "its container was gone when the server started")
            else:
                await self.runtime.destroy(record.id)
                await self._record_end(
                    record, REASON_SERVER,
                    "its container was gone when the server started (host restart or runtime failure)",
                )
        for live in self.live.values():
            self.slots.mark(live.record.id_slot)
        for orphan in set(containers) - known:
            log.warning("removing container %s that no cell record owns", orphan)
            await self.runtime.destroy(orphan)

    async def _adopt(self, record: Cell, status: str) -> bool:
        live = LiveCell(record, AgentClient(self.runtime.agent_socket(record.id)))
        if status == "running":
            try:
                await live.agent.request("GET", "/health", timeout=5)
            except ApiError:
                await live.agent.close()
                return False
            if record.state == CellState.PAUSED.value:
                # The server stopped between thawing and recording it: running it is.
                await self._transition(record, CellState.RUNNING, "cell.resumed", {"after": "server restart"}, paused_at=None)
        elif record.state == CellState.RUNNING.value:
            # Frozen but recorded running: a pause that did not finish. Thaw it.
            await self.runtime.resume(record.id)
        # A restart must never make a cell end earlier than its timeout promised.
        record.last_activity = max(record.last_activity, time.time())
        self.live[record.id] = live
        self.timers.arm(record.id)
        return True

    async def _keep_as_evicted(self, record: Cell, detail: str) -> None:
        """A cell whose processes are gone but which has a snapshot: paused, restored on resume."""
        record.evicted = True
        record.paused_at = record.paused_at or time.time()
        if record.state == CellState.RUNNING.value:
            await self._transition(
                record, CellState.PAUSED, "cell.paused",
                {"reason": "server", "detail": f"{detail}; resume restores its latest snapshot"},
                paused_at=record.paused_at, evicted=True,
            )
        else:
            await self.store.update_cell(record.id, evicted=True, paused_at=record.paused_at)
        live = self.live.get(record.id)
        if live is None:
            self.live[record.id] = LiveCell(record, AgentClient(self.runtime.agent_socket(record.id)))
        else:
            await live.agent.close()  # its connections went with the old container

    # -- reading -------------------------------------------------------------------

    async def get(self, tenant_id: str, cell_id: str, activity: bool = False) -> Cell:
        """A cell of this tenant (killed ones within retention); ``activity`` counts the call."""
        live = self.live.get(cell_id)
        record = live.record if live is not None else await self.store.get_cell(cell_id)
        if activity and live is not None and record.tenant_id == tenant_id:
            self.touch(live)
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
            if not record.lifecycle.get("auto_resume"):
                raise ApiError(
                    409, f"cell {cell_id!r} is paused; resume it first (POST /v1/cells/{cell_id}/resume)", "cell_paused"
                )
            await self.resume(tenant_id, cell_id)
        live = self.live.get(cell_id)
        if live is None or record.state != CellState.RUNNING.value:
            raise ApiError(409, f"cell {cell_id!r} is {record.state}; try again in a moment", "cell_not_ready")
        if live.pausing:
            raise ApiError(409, f"cell {cell_id!r} is being paused; resume it once the pause is done", "cell_pausing")
        return live

    # -- life cycle ----------------------------------------------------------------------

    def _limits(self, request: Any, launch: Launch | None = None) -> Limits:
        """The request's limits, else the template's, else the server's defaults."""
        default, maximum = self.config.default_limits, self.config.max_limits
        values = {}
        for name in ("memory_mb", "cpu_count", "pids", "disk_mb"):
            value = getattr(request, name, None)
            if value is None and launch is not None:
                value = launch.limits.get(name)
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

    async def create(self, tenant_id: str, request: Any) -> Cell:
        launch = None
        if request.template not in BUILTIN_TEMPLATES:
            if self.templates is None:
                raise bad_request(
                    f"unknown template {request.template!r}; available: {', '.join(sorted(BUILTIN_TEMPLATES))}"
                )
            launch = await self.templates.launch(tenant_id, request.template)
        self._refuse_unsupported(request)
        self._check_quota(tenant_id)
        fork = await self._fork_source(tenant_id, getattr(request, "snapshot_id", None))
        limits = self._limits(request, launch)
        now = time.time()
        timeout_s = request.timeout_ms / 1000 if request.timeout_ms else (
            launch.timeout_s if launch is not None and launch.timeout_s else self.config.default_timeout_s
        )
        # A warm cell fits a built-in template with default limits, not a fork.
        warm = self.pool.take(limits) if launch is None and fork is None else None
        slot = warm.id_slot if warm is not None else self.slots.take()
        record = Cell(
            id=warm.cell_id if warm is not None else new_cell_id(),
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
            envs={**(launch.envs if launch is not None else {}), **(request.envs or {})},
            limits=limits.__dict__.copy(),
            lifecycle=(request.lifecycle.model_dump() if request.lifecycle else {"on_timeout": "kill", "auto_resume": False}),
            network=(request.network.model_dump(exclude_none=True) if request.network else {}),
            executions=0,
            runtime=self.runtime.name,
            source_snapshot_id=getattr(request, "snapshot_id", None),
            id_slot=slot,
        )
        await self.store.add_cell(record)
        options: dict[str, Any] = {}
        if launch is not None and self.templates is not None:
            await self.templates.record_use(launch, record.id)
            options = launch.container_options()
        live = LiveCell(record, warm.agent if warm is not None else AgentClient(self.runtime.agent_socket(record.id)))
        self.live[record.id] = live
        try:
            if warm is None:
                spec = CellSpec(record.id, limits, dict(record.envs), id_base=id_base(slot), **options)
                await self.runtime.start(spec, *(fork or ()))
                await self._wait_for_agent(live)
            if launch is not None and self.templates is not None:
                await self.templates.prepare_cell(launch, live.agent, dict(record.envs))
        except (CellRuntimeError, ApiError) as exc:
            log.warning("cell %s failed to start: %s", record.id, exc)
            await self._end(record.id, REASON_ERROR, f"failed to start: {exc}")
            raise ApiError(500, f"the cell could not be started: {exc}", "cell_start_failed") from exc
        record.started_at = record.last_activity = time.time()
        await self._transition(record, CellState.RUNNING, "cell.created", {"template": record.template})
        self.meters.usage.add(tenant_id, cells_created=1)
        self.timers.arm(record.id)
        return record

    async def _fork_source(self, tenant_id: str, snapshot_id: str | None) -> tuple[Path, int] | None:
        """The verified archive a new cell starts from (a fork of a snapshot of the same
        tenant), with the id range its files belong to."""
        if snapshot_id is None:
            return None
        snapshot = await self.store.get_snapshot(snapshot_id)
        if snapshot is None or snapshot.tenant_id != tenant_id:
            raise ApiError(404, f"snapshot {snapshot_id!r} not found for this API key", "not_found")
        path = snapshots.archive_path(self.config.data_dir, snapshot.cell_id, snapshot.id)
        try:
            await archive.verify(path, snapshot.digest)
        except CellRuntimeError as exc:
            raise ApiError(409, f"cannot fork from {snapshot_id}: {exc}", "snapshot_unusable") from exc
        source = await self.store.get_cell(snapshot.cell_id)
        return path, id_base(source.id_slot if source is not None else 1)

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
            self._account_end(live.record)
            try:
                await self.runtime.destroy(cell_id)
            finally:
                self.live.pop(cell_id, None)
                self.slots.give_back(live.record.id_slot)
                await live.agent.close()
                await self._record_end(live.record, reason, detail)

    def _account_end(self, record: Cell) -> None:
        """Add what a cell used to its tenant's totals, read from its cgroup before it goes."""
        figures = cgroups.usage(record.id)
        self.meters.usage.add(
            record.tenant_id, cell_seconds=time.time() - record.started_at,
            cpu_seconds=figures["cpu_seconds"], memory_peak_bytes=figures["memory_peak_bytes"],
        )

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
        """Running: its inactivity timeout. Paused: when its container is let go."""
        live = self.live.get(cell_id)
        if live is None:
            return None
        record = live.record
        if record.state == CellState.PAUSED.value:
            if record.evicted or record.paused_at is None:
                return None
            return record.paused_at + self.config.evict_after_s
        if record.state != CellState.RUNNING.value:
            return None
        if live.busy:
            return time.time() + record.timeout_s
        return record.last_activity + record.timeout_s

    async def _expire(self, cell_id: str) -> None:
        live = self.live.get(cell_id)
        if live is None:
            return
        if live.record.state == CellState.PAUSED.value:
            await self._evict(live)
            return
        timeout = live.record.timeout_s
        await self.events.emit(live.record.tenant_id, cell_id, "cell.timeout", {"timeout_s": timeout})
        if live.record.lifecycle.get("on_timeout") == "pause":
            try:
                await self._pause(live, reason=REASON_TIMEOUT)
                return
            except ApiError as exc:
                log.warning("cell %s could not pause at its timeout (%s); killing it", cell_id, exc.error)
        await self._end(cell_id, REASON_TIMEOUT, f"inactive for {timeout:g} s (its timeout)")

    def touch(self, live: LiveCell) -> None:
        live.record.last_activity = time.time()
        live.dirty = True

    @contextlib.asynccontextmanager
    async def activity(self, live: LiveCell, stream: bool = False) -> AsyncIterator[None]:
        """Marks an operation in progress: the cell cannot time out until it ends.

        A pause waits for operations to finish, except client streams (a terminal,
        a watch), which are frozen with the cell and carry on after a resume.
        """
        live.busy += 1
        live.inflight += 0 if stream else 1
        self.touch(live)
        try:
            yield
        finally:
            live.busy -= 1
            live.inflight -= 0 if stream else 1
            self.touch(live)

    async def call_agent(self, tenant_id: str, cell_id: str, method: str, path: str, **kwargs: Any) -> Any:
        """One short call to a running cell's agent, counted as activity."""
        live = await self.running(tenant_id, cell_id)
        self.touch(live)
        return await live.agent.request(method, path, **kwargs)

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

    # -- pause, resume, snapshots ----------------------------------------------------------------

    async def pause(self, tenant_id: str, cell_id: str) -> Snapshot:
        record = await self.get(tenant_id, cell_id)
        if record.state == CellState.KILLED.value:
            raise ApiError(404, f"cell {cell_id!r} has ended ({record.end_reason}); create a new cell", "cell_killed")
        if record.state != CellState.RUNNING.value:
            raise ApiError(409, f"cell {cell_id!r} is {record.state}; only a running cell can be paused", "cell_not_running")
        return await self._pause(self.live[cell_id], reason=REASON_REQUEST)

    async def _pause(self, live: LiveCell, reason: str) -> Snapshot:
        """Freeze and snapshot, or leave the cell running: never half paused."""
        record = live.record
        async with live.lock:
            if record.state != CellState.RUNNING.value:
                raise ApiError(409, f"cell {record.id!r} is {record.state}; only a running cell can be paused", "cell_not_running")
            live.pausing = True
            try:
                await self._drain(live)
                await self.runtime.pause(record.id)
                try:
                    snapshot = await self._snapshot(live, "pause")
                except ApiError:
                    await self.runtime.resume(record.id)  # a quota or a full disk: still running
                    raise
                except Exception as exc:
                    await self.runtime.resume(record.id)
                    raise ApiError(
                        500, f"the cell could not be paused, its snapshot failed ({exc}); it is still running",
                        "pause_failed",
                    ) from exc
                self.timers.disarm(record.id)
                record.paused_at = time.time()
                await self._transition(
                    record, CellState.PAUSED, "cell.paused", {"snapshot_id": snapshot.id, "reason": reason},
                    paused_at=record.paused_at,
                )
            finally:
                live.pausing = False
        self.timers.arm(record.id)
        return snapshot

    async def _drain(self, live: LiveCell) -> None:
        """Let executions and commands in flight finish before freezing (bounded)."""
        deadline = time.monotonic() + self.config.pause_drain_s
        while live.inflight:
            if time.monotonic() > deadline:
                raise ApiError(
                    409, f"cell {live.record.id!r} is still running an execution or command after "
                    f"{self.config.pause_drain_s:g} s; try the pause again when it is done", "cell_busy",
                )
            await asyncio.sleep(0.05)

    def _check_quota(self, tenant_id: str) -> None:
        live = sum(1 for l in self.live.values() if l.record.tenant_id == tenant_id)
        if live >= self.config.max_cells_per_key:
            raise ApiError(
                429, f"this API key already has {live} live cells, its limit; kill some first", "quota_exceeded",
            )
        self._check_disk()

    def _check_disk(self) -> None:
        free = shutil.disk_usage(self.config.data_dir).free
        if free < self.config.min_free_disk_bytes:
            raise ApiError(507, f"the server's disk is nearly full ({free // 2**20} MiB free); try again later", "disk_full")

    async def _snapshot(self, live: LiveCell, reason: str, namespace_saved: bool = False) -> Snapshot:
        """Archive a frozen cell's disk and record the verified manifest."""
        record = live.record
        self._check_disk()
        used = await self.store.snapshot_bytes(record.tenant_id)
        if used >= self.config.max_snapshot_bytes_per_key:
            raise ApiError(
                429, f"this API key's snapshots take {used // 2**20} MiB, its limit; delete some first",
                "quota_exceeded",
            )
        snapshot_id = snapshots.new_snapshot_id()
        path = snapshots.archive_path(self.config.data_dir, record.id, snapshot_id)
        size, digest = await self.runtime.snapshot(record.id, path)
        snapshot = Snapshot(
            id=snapshot_id, tenant_id=record.tenant_id, cell_id=record.id, created_at=time.time(),
            size_bytes=size, digest=digest, reason=reason, namespace_saved=namespace_saved,
        )
        await self.store.add_snapshot(snapshot)
        await self.events.emit(record.tenant_id, record.id, "cell.snapshot_created", {
            "snapshot_id": snapshot_id, "reason": reason, "size_bytes": size, "digest": digest,
        })
        return snapshot

    async def take_snapshot(self, tenant_id: str, cell_id: str) -> Snapshot:
        """A restore point of a running cell, frozen only while its disk is archived."""
        live = await self.running(tenant_id, cell_id)
        async with live.lock:
            await self.runtime.pause(cell_id)
            try:
                return await self._snapshot(live, "manual")
            finally:
                await self.runtime.resume(cell_id)

    async def resume(self, tenant_id: str, cell_id: str) -> dict[str, Any]:
        """Thaw a paused cell, or start it again from its snapshot if its container is gone."""
        record = await self.get(tenant_id, cell_id)
        if record.state == CellState.KILLED.value:
            raise ApiError(404, f"cell {cell_id!r} has ended ({record.end_reason}); create a new cell", "cell_killed")
        live = self.live[cell_id]
        async with live.lock:
            if record.state == CellState.RUNNING.value:
                return {"already_running": True}
            if not record.evicted and await self.runtime.status(cell_id) == "paused":
                await self.runtime.resume(cell_id)
                restored: dict[str, Any] = {"from": "memory", "files": True, "processes": True, "variables": True}
            else:
                restored = await self._restore(live)
            record.paused_at = None
            record.evicted = False
            self.touch(live)
            await self._transition(
                record, CellState.RUNNING, "cell.resumed", {"restored": restored}, paused_at=None, evicted=False,
            )
        self.timers.arm(cell_id)
        return restored

    async def _restore(self, live: LiveCell) -> dict[str, Any]:
        """Start a fresh container from the latest snapshot; the record is untouched on failure."""
        record = live.record
        kept = await self.store.list_snapshots(record.id)
        if not kept:
            raise ApiError(409, f"cell {record.id!r} has no snapshot to restore from", "no_snapshot")
        snapshot = kept[-1]
        path = snapshots.archive_path(self.config.data_dir, record.id, snapshot.id)
        try:
            await archive.verify(path, snapshot.digest)
            await self.runtime.start(await self._spec(record), restore_from=path)
        except CellRuntimeError as exc:
            raise ApiError(500, f"the cell could not be restored from {snapshot.id}: {exc}; it stays paused", "restore_failed") from exc
        await live.agent.close()
        live.agent = AgentClient(self.runtime.agent_socket(record.id))
        try:
            await self._wait_for_agent(live)
        except CellRuntimeError as exc:
            await self.runtime.destroy(record.id)
            raise ApiError(500, f"the restored cell did not start: {exc}; it stays paused", "restore_failed") from exc
        variables: Any = False
        if snapshot.namespace_saved:
            variables = await snapshots.restore_namespace(live.agent) or False
        restored = {"from": snapshot.id, "files": True, "processes": False, "variables": variables}
        await self.events.emit(record.tenant_id, record.id, "cell.restored", restored)
        return restored

    async def _evict(self, live: LiveCell) -> None:
        """Release a long-paused cell's memory: save what can be saved, keep only the snapshot."""
        record = live.record
        async with live.lock:
            if record.state != CellState.PAUSED.value or record.evicted:
                return
            namespace = None
            try:
                await self.runtime.resume(record.id)
                try:
                    namespace = await snapshots.save_namespace(live.agent)
                except ApiError as exc:
                    log.warning("cell %s: python namespace not saved before eviction: %s", record.id, exc.error)
                finally:
                    await self.runtime.pause(record.id)
                snapshot = await self._snapshot(live, "eviction", namespace_saved=namespace is not None)
            except Exception:
                log.exception("cell %s could not be evicted; it stays paused in memory", record.id)
                return
            await self.runtime.destroy(record.id)
            record.evicted = True
            await self.store.update_cell(record.id, evicted=True)
            await self.events.emit(record.tenant_id, record.id, "cell.evicted", {
                "snapshot_id": snapshot.id, "variables_saved": (namespace or {}).get("saved", []),
            })

    async def list_snapshots(self, tenant_id: str, cell_id: str) -> list[Snapshot]:
        await self.get(tenant_id, cell_id)
        return await self.store.list_snapshots(cell_id)

    async def delete_snapshot(self, tenant_id: str, cell_id: str, snapshot_id: str) -> None:
        await self.get(tenant_id, cell_id)
        snapshot = await self.store.get_snapshot(snapshot_id)
        if snapshot is None or snapshot.cell_id != cell_id:
            raise ApiError(404, f"snapshot {snapshot_id!r} not found for cell {cell_id!r}", "not_found")
        await self.store.delete_snapshot(snapshot_id)
        snapshots.archive_path(self.config.data_dir, cell_id, snapshot_id).unlink(missing_ok=True)

    async def _spec(self, record: Cell) -> CellSpec:
        """What a restored cell is started with: its limits, envs and its template's build."""
        options = await self.templates.container_options(record.id) if self.templates else {}
        return CellSpec(record.id, Limits(**record.limits), dict(record.envs), id_base=id_base(record.id_slot), **options)

    async def runtime_of(self, live: LiveCell) -> str:
        """The cell's template runtime (python3 or javascript), which picks its default language."""
        if live.template_runtime is None:
            name = live.record.template
            runtime = name if name in BUILTIN_TEMPLATES else None
            if runtime is None and self.templates is not None:
                try:
                    runtime = (await self.templates.get(live.record.tenant_id, name)).runtime
                except ApiError:
                    runtime = "python3"  # the template was deleted since; python is the default
            live.template_runtime = runtime or "python3"
        return live.template_runtime

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
        """Write activity times and usage kept in memory (too frequent to write each time)."""
        await self.meters.usage.flush()
        for live in list(self.live.values()):
            if live.dirty:
                live.dirty = False
                await self.store.update_cell(
                    live.record.id, last_activity=live.record.last_activity, executions=live.record.executions
                )

    async def check_liveness(self) -> None:
        """Account for cells whose container died under us (the agent was killed, OOM...)."""
        for cell_id, live in list(self.live.items()):
            record = live.record
            if record.state != CellState.RUNNING.value or live.lock.locked() or self.runtime.alive(cell_id):
                continue
            log.warning("cell %s: its container stopped unexpectedly", cell_id)
            detail = "its container stopped unexpectedly (the agent was killed, perhaps out of memory)"
            if await self.store.list_snapshots(cell_id):
                async with live.lock:
                    self.timers.disarm(cell_id)
                    await self.runtime.destroy(cell_id)
                    await self._keep_as_evicted(record, detail)
            else:
                await self._end(cell_id, REASON_ERROR, detail)

    async def purge(self) -> None:
        purged = await self.store.purge_cells(time.time() - self.config.retention_s)
        for cell_id in purged:
            shutil.rmtree(self.config.data_dir / "snapshots" / cell_id, ignore_errors=True)
        if purged:
            log.info("purged %d killed cells past retention, with their snapshots", len(purged))
