"""Persistent state: SQLAlchemy (async) over SQLite by default, PostgreSQL by URL.

The schema is owned by Alembic migrations, applied when the store opens.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import time
from pathlib import Path
from typing import Any, Iterable

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import delete, event, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from .models import ApiKey, Cell, Event, Receipt, Snapshot, TenantUsage
from .template_models import Template, TemplateCell
from .webhook_models import Webhook, WebhookDelivery

__all__ = ["Store", "ApiKey", "Cell", "Event", "Snapshot", "hash_key", "new_key"]

KEY_PREFIX = "cell_sk_live_"
_MIGRATIONS = Path(__file__).parent / "migrations"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def new_event_id() -> str:
    """Sortable by time: nanoseconds, then randomness against collisions."""
    return f"evt_{time.time_ns():020d}{secrets.token_hex(4)}"


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{data_dir / 'cellbox.db'}"


class Store:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: AsyncEngine = create_async_engine(url)
        if url.startswith("sqlite"):
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.session = async_sessionmaker(self.engine, expire_on_commit=False)

    async def open(self) -> None:
        async with self.engine.begin() as conn:
            await conn.run_sync(_upgrade)
        database = self.engine.url.database
        if self.url.startswith("sqlite") and database and os.path.exists(database):
            os.chmod(database, 0o600)

    async def close(self) -> None:
        await self.engine.dispose()

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.exec_driver_sql("SELECT 1")
            return True
        except Exception:
            return False

    # -- API keys --------------------------------------------------------------

    async def create_key(self, name: str = "", key: str | None = None) -> tuple[ApiKey, str]:
        key = key or new_key()
        record = ApiKey(
            id="key_" + secrets.token_hex(6),
            name=name,
            key_hash=hash_key(key),
            prefix=key[: len(KEY_PREFIX) + 4],
            created_at=time.time(),
        )
        async with self.session.begin() as s:
            s.add(record)
        return record, key

    async def find_key(self, key: str) -> ApiKey | None:
        async with self.session() as s:
            return await s.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))

    async def list_keys(self) -> list[ApiKey]:
        async with self.session() as s:
            return list(await s.scalars(select(ApiKey).order_by(ApiKey.created_at)))

    async def revoke_key(self, key_id_or_prefix: str) -> ApiKey | None:
        async with self.session.begin() as s:
            matches = list(
                await s.scalars(
                    select(ApiKey).where(
                        (ApiKey.id == key_id_or_prefix) | (ApiKey.prefix == key_id_or_prefix)
                    )
                )
            )
            if len(matches) != 1:
                return None
            matches[0].revoked_at = matches[0].revoked_at or time.time()
            return matches[0]

    # -- cells -------------------------------------------------------------------

    async def add_cell(self, cell: Cell) -> None:
        async with self.session.begin() as s:
            s.add(cell)

    async def get_cell(self, cell_id: str) -> Cell | None:
        async with self.session() as s:
            return await s.get(Cell, cell_id)

    async def update_cell(self, cell_id: str, **fields: Any) -> None:
        async with self.session.begin() as s:
            await s.execute(update(Cell).where(Cell.id == cell_id).values(**fields))

    async def cells_in_states(self, states: Iterable[str]) -> list[Cell]:
        async with self.session() as s:
            return list(await s.scalars(select(Cell).where(Cell.state.in_(list(states)))))

    async def list_cells(
        self,
        tenant_id: str,
        states: list[str],
        metadata: dict[str, str],
        limit: int,
        after: tuple[float, str] | None,
    ) -> list[Cell]:
        query = select(Cell).where(Cell.tenant_id == tenant_id, Cell.state.in_(states))
        for key, value in metadata.items():
            query = query.where(Cell.cell_metadata[key].as_string() == value)
        if after is not None:
            created_at, cell_id = after
            query = query.where(
                (Cell.created_at > created_at) | ((Cell.created_at == created_at) & (Cell.id > cell_id))
            )
        query = query.order_by(Cell.created_at, Cell.id).limit(limit)
        async with self.session() as s:
            return list(await s.scalars(query))

    async def purge_cells(self, ended_before: float) -> list[str]:
        """Forget killed cells (their events, receipts and snapshot records) past retention.

        The caller removes the snapshot archives of the returned cells.
        """
        async with self.session.begin() as s:
            ids = list(
                await s.scalars(select(Cell.id).where(Cell.state == "killed", Cell.ended_at < ended_before))
            )
            if ids:
                await s.execute(delete(Event).where(Event.cell_id.in_(ids)))
                await s.execute(delete(Receipt).where(Receipt.cell_id.in_(ids)))
                await s.execute(delete(Snapshot).where(Snapshot.cell_id.in_(ids)))
                await s.execute(delete(Cell).where(Cell.id.in_(ids)))
            return ids

    # -- events --------------------------------------------------------------------

    async def add_event(self, tenant_id: str, cell_id: str | None, type: str, data: dict) -> Event:
        record = Event(
            id=new_event_id(), tenant_id=tenant_id, cell_id=cell_id, type=type, timestamp=time.time(), data=data
        )
        async with self.session.begin() as s:
            s.add(record)
        return record

    async def cell_events(self, cell_id: str, limit: int = 100) -> list[Event]:
        async with self.session() as s:
            query = select(Event).where(Event.cell_id == cell_id).order_by(Event.id.desc()).limit(limit)
            return list(await s.scalars(query))

    # -- snapshots -------------------------------------------------------------------

    async def add_snapshot(self, snapshot: Snapshot) -> None:
        async with self.session.begin() as s:
            s.add(snapshot)

    async def get_snapshot(self, snapshot_id: str) -> Snapshot | None:
        async with self.session() as s:
            return await s.get(Snapshot, snapshot_id)

    async def list_snapshots(self, cell_id: str) -> list[Snapshot]:
        async with self.session() as s:
            query = select(Snapshot).where(Snapshot.cell_id == cell_id).order_by(Snapshot.created_at)
            return list(await s.scalars(query))

    async def delete_snapshot(self, snapshot_id: str) -> None:
        async with self.session.begin() as s:
            await s.execute(delete(Snapshot).where(Snapshot.id == snapshot_id))

    # -- usage and counts ---------------------------------------------------------------

    async def add_usage(self, tenant_id: str, deltas: dict[str, float], peaks: dict[str, float]) -> None:
        async with self.session.begin() as s:
            names = set(deltas) | set(peaks)
            rows = {
                row.name: row
                for row in await s.scalars(
                    select(TenantUsage).where(TenantUsage.tenant_id == tenant_id, TenantUsage.name.in_(names))
                )
            }
            for name in names:
                row = rows.get(name)
                if row is None:
                    row = TenantUsage(tenant_id=tenant_id, name=name, value=0.0)
                    s.add(row)
                if name in peaks:
                    row.value = max(row.value, peaks[name])
                else:
                    row.value += deltas[name]

    async def usage(self, tenant_id: str) -> dict[str, float]:
        async with self.session() as s:
            rows = await s.execute(select(TenantUsage.name, TenantUsage.value).where(TenantUsage.tenant_id == tenant_id))
            return {name: value for name, value in rows}

    async def count_cells(self, tenant_id: str | None = None, *, created_after: float | None = None,
                          ended_after: float | None = None) -> int:
        query = select(func.count()).select_from(Cell)
        if tenant_id is not None:
            query = query.where(Cell.tenant_id == tenant_id)
        if created_after is not None:
            query = query.where(Cell.created_at >= created_after)
        if ended_after is not None:
            query = query.where(Cell.state == "killed", Cell.ended_at >= ended_after)
        async with self.session() as s:
            return int(await s.scalar(query) or 0)

    async def snapshot_bytes(self, tenant_id: str | None = None) -> int:
        query = select(func.coalesce(func.sum(Snapshot.size_bytes), 0))
        if tenant_id is not None:
            query = query.where(Snapshot.tenant_id == tenant_id)
        async with self.session() as s:
            return int(await s.scalar(query) or 0)

    # -- receipts --------------------------------------------------------------------

    async def add_receipts(self, receipts: list[dict[str, Any]]) -> None:
        rows = [
            {
                "execution_id": r["execution_id"], "tenant_id": r["tenant_id"], "cell_id": r["cell_id"],
                "sequence": r["sequence"], "receipt": {k: v for k, v in r.items() if k != "tenant_id"},
            }
            for r in receipts
        ]
        async with self.engine.begin() as conn:
            await conn.execute(insert(Receipt), rows)

    async def last_receipt(self, cell_id: str) -> dict[str, Any] | None:
        async with self.session() as s:
            query = select(Receipt.receipt).where(Receipt.cell_id == cell_id).order_by(Receipt.sequence.desc()).limit(1)
            return await s.scalar(query)

    async def list_receipts(self, cell_id: str, after: int = -1, limit: int = 1000) -> list[dict[str, Any]]:
        async with self.session() as s:
            query = (
                select(Receipt.receipt).where(Receipt.cell_id == cell_id, Receipt.sequence > after)
                .order_by(Receipt.sequence).limit(limit)
            )
            return list(await s.scalars(query))


    # -- webhooks and event queries ---------------------------------------------------
    # The webhook models are imported inside each method: this section is appended to
    # the class and leaves the module's imports as they are.

    async def record_event(self, event: Event, payload: str) -> int:
        """Store an event and, in the same transaction, a delivery for each webhook that wants it.

        Answers how many deliveries were queued.
        """

        queued = 0
        async with self.session.begin() as s:
            s.add(event)
            for hook in await s.scalars(select(Webhook).where(Webhook.tenant_id == event.tenant_id)):
                if not hook.wants(event.type):
                    continue
                s.add(WebhookDelivery(
                    id=f"msg_{time.time_ns():020d}{secrets.token_hex(4)}", webhook_id=hook.id,
                    tenant_id=event.tenant_id, event_id=event.id, event_type=event.type, payload=payload,
                    state="pending", attempts=0, attempt_log=[], created_at=event.timestamp,
                    next_attempt_at=event.timestamp,
                ))
                queued += 1
        return queued

    async def list_events(
        self,
        tenant_id: str,
        *,
        cell_id: str | None = None,
        types: list[str] | None = None,
        since: str | None = None,
        before: str | None = None,
        limit: int = 100,
    ) -> list[Event]:
        """Newest first. With ``since``: the ``limit`` events right after it, so a cursor never skips."""

        query = select(Event).where(Event.tenant_id == tenant_id)
        if cell_id is not None:
            query = query.where(Event.cell_id == cell_id)
        if types and "*" not in types:
            query = query.where(or_(*(
                Event.type.startswith(t[:-1], autoescape=True) if t.endswith(".*") else Event.type == t
                for t in types
            )))
        if before is not None:
            query = query.where(Event.id < before)
        async with self.session() as s:
            if since is not None:
                rows = list(await s.scalars(query.where(Event.id > since).order_by(Event.id).limit(limit)))
                return rows[::-1]
            return list(await s.scalars(query.order_by(Event.id.desc()).limit(limit)))

    async def add_webhook(self, hook: Any) -> None:
        async with self.session.begin() as s:
            s.add(hook)

    async def get_webhook(self, webhook_id: str, tenant_id: str | None = None) -> Any:
        """The webhook; with ``tenant_id``, only if it is that tenant's."""

        async with self.session() as s:
            hook = await s.get(Webhook, webhook_id)
        if hook is None or (tenant_id is not None and hook.tenant_id != tenant_id):
            return None
        return hook

    async def list_webhooks(self, tenant_id: str) -> list[Any]:

        async with self.session() as s:
            query = select(Webhook).where(Webhook.tenant_id == tenant_id).order_by(Webhook.created_at, Webhook.id)
            return list(await s.scalars(query))

    async def delete_webhook(self, tenant_id: str, webhook_id: str) -> bool:
        """Delete a webhook with its deliveries, so nothing more is sent to it."""

        async with self.session.begin() as s:
            hook = await s.get(Webhook, webhook_id)
            if hook is None or hook.tenant_id != tenant_id:
                return False
            await s.execute(delete(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id))
            await s.delete(hook)
            return True

    async def list_deliveries(self, webhook_id: str, limit: int = 100, state: str | None = None) -> list[Any]:

        query = select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
        if state is not None:
            query = query.where(WebhookDelivery.state == state)
        async with self.session() as s:
            return list(await s.scalars(query.order_by(WebhookDelivery.id.desc()).limit(limit)))

    async def due_webhooks(self, now: float) -> list[str]:
        """Webhooks with at least one delivery due."""

        query = select(WebhookDelivery.webhook_id).where(WebhookDelivery.state == "pending", WebhookDelivery.next_attempt_at <= now).distinct()
        async with self.session() as s:
            return list(await s.scalars(query))

    async def due_deliveries(self, webhook_id: str, now: float, exclude: Iterable[str], limit: int) -> list[Any]:

        query = select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id, WebhookDelivery.state == "pending", WebhookDelivery.next_attempt_at <= now)
        excluded = list(exclude)
        if excluded:
            query = query.where(WebhookDelivery.id.not_in(excluded))
        async with self.session() as s:
            return list(await s.scalars(query.order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id).limit(limit)))

    async def next_delivery_due(self, exclude: Iterable[str]) -> float | None:


        query = select(func.min(WebhookDelivery.next_attempt_at)).where(WebhookDelivery.state == "pending")
        excluded = list(exclude)
        if excluded:
            query = query.where(WebhookDelivery.id.not_in(excluded))
        async with self.session() as s:
            return await s.scalar(query)

    async def record_attempt(
        self, delivery_id: str, attempt: dict, state: str, next_attempt_at: float | None
    ) -> None:
        """Log one attempt; a delivery deleted meanwhile (its webhook was) is left alone."""

        async with self.session.begin() as s:
            delivery = await s.get(WebhookDelivery, delivery_id)
            if delivery is None:
                return
            delivery.attempts += 1
            delivery.attempt_log = [*delivery.attempt_log, attempt]
            delivery.state = state
            delivery.next_attempt_at = next_attempt_at
            if state != "pending":
                delivery.finished_at = attempt["at"]

    async def purge_deliveries(self, finished_before: float) -> int:

        async with self.session.begin() as s:
            result = await s.execute(
                delete(WebhookDelivery).where(WebhookDelivery.state.in_(["delivered", "failed"]), WebhookDelivery.finished_at < finished_before)
            )
            return result.rowcount or 0

    # -- templates ----------------------------------------------------------------------
    # As with webhooks, the template models are imported inside each method.

    async def add_template(self, template: Any) -> None:
        async with self.session.begin() as s:
            s.add(template)

    async def get_template(self, tenant_id: str, name: str) -> Any:

        async with self.session() as s:
            return await s.scalar(select(Template).where(Template.tenant_id == tenant_id, Template.name == name))

    async def get_template_by_id(self, template_id: str) -> Any:

        async with self.session() as s:
            return await s.get(Template, template_id)

    async def list_templates(self, tenant_id: str | None = None, status: str | None = None) -> list[Any]:

        query = select(Template)
        if tenant_id is not None:
            query = query.where(Template.tenant_id == tenant_id)
        if status is not None:
            query = query.where(Template.status == status)
        async with self.session() as s:
            return list(await s.scalars(query.order_by(Template.created_at, Template.id)))

    async def update_template(self, template_id: str, **fields: Any) -> None:

        async with self.session.begin() as s:
            await s.execute(update(Template).where(Template.id == template_id).values(**fields))

    async def delete_template(self, template_id: str) -> None:

        async with self.session.begin() as s:
            await s.execute(delete(Template).where(Template.id == template_id))

    async def add_template_cell(self, cell_id: str, template_id: str, version: int, options: dict) -> None:

        async with self.session.begin() as s:
            s.add(TemplateCell(
                cell_id=cell_id, template_id=template_id, version=version, options=options, created_at=time.time()
            ))

    async def template_cell(self, cell_id: str) -> Any:

        async with self.session() as s:
            return await s.get(TemplateCell, cell_id)

    async def template_builds_in_use(self, unknown_grace_s: float) -> dict[tuple[str, int], list[str]]:
        """Builds mounted by cells not yet killed, with those cells' ids.

        A use whose cell has no record yet is a cell being created; once older than
        ``unknown_grace_s`` it is the leftover of a purged cell, and is forgotten.
        """

        in_use: dict[tuple[str, int], list[str]] = {}
        now = time.time()
        async with self.session.begin() as s:
            rows = (await s.execute(
                select(TemplateCell, Cell.state).join(Cell, Cell.id == TemplateCell.cell_id, isouter=True)
            )).all()
            stale = []
            for use, state in rows:
                if state is None and use.created_at < now - unknown_grace_s:
                    stale.append(use.cell_id)
                elif state != "killed":
                    in_use.setdefault((use.template_id, use.version), []).append(use.cell_id)
            if stale:
                await s.execute(delete(TemplateCell).where(TemplateCell.cell_id.in_(stale)))
        return in_use


def encode_cursor(created_at: float, cell_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at!r}|{cell_id}".encode()).decode().rstrip("=")


def decode_cursor(token: str) -> tuple[float, str]:
    """Raises ValueError for a token we did not make."""
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    created_at, cell_id = raw.split("|", 1)
    return float(created_at), cell_id


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _upgrade(connection: Any) -> None:
    config = AlembicConfig()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def ensure_data_dir(data_dir: Path) -> None:
    # Traversable, not listable: cells' unprivileged host uids must reach their
    # bundles inside it. Secrets in it (the database) are 0600 themselves.
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o711)
