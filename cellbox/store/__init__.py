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
from sqlalchemy import delete, event, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from .models import ApiKey, Cell, Event

__all__ = ["Store", "ApiKey", "Cell", "Event", "hash_key", "new_key"]

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
        """Forget killed cells (and their events) whose retention has passed."""
        async with self.session.begin() as s:
            ids = list(
                await s.scalars(select(Cell.id).where(Cell.state == "killed", Cell.ended_at < ended_before))
            )
            if ids:
                await s.execute(delete(Event).where(Event.cell_id.in_(ids)))
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
