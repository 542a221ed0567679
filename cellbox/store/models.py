"""Tables. Times are seconds since the epoch (float); JSON columns hold maps."""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Float, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    # SHA-256 of the whole key: keys are long random secrets, so a fast hash is enough.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class Cell(Base):
    __tablename__ = "cells"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(32), index=True)
    template: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float] = mapped_column(Float)
    last_activity: Mapped[float] = mapped_column(Float)
    timeout_s: Mapped[float] = mapped_column(Float)
    persistent: Mapped[bool] = mapped_column(Boolean, default=True)
    secure: Mapped[bool] = mapped_column(Boolean, default=True)
    allow_internet_access: Mapped[bool] = mapped_column(Boolean, default=False)
    name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    cell_metadata: Mapped[dict] = mapped_column("metadata", JSON, default=dict)
    envs: Mapped[dict] = mapped_column(JSON, default=dict)
    limits: Mapped[dict] = mapped_column(JSON, default=dict)
    lifecycle: Mapped[dict] = mapped_column(JSON, default=dict)
    network: Mapped[dict] = mapped_column(JSON, default=dict)
    executions: Mapped[int] = mapped_column(Integer, default=0)
    runtime: Mapped[str] = mapped_column(String(32), default="runc")
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    end_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    paused_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Paused long enough that its container was stopped: only its snapshot is left.
    evicted: Mapped[bool] = mapped_column(Boolean, default=False)
    source_snapshot_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # Which range of host ids the cell's user namespace maps to (runtime.id_base).
    id_slot: Mapped[int] = mapped_column(Integer, default=1)

    __table_args__ = (Index("ix_cells_tenant_created", "tenant_id", "created_at", "id"),)


class Event(Base):
    __tablename__ = "events"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(32))
    cell_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    type: Mapped[str] = mapped_column(String(64))
    timestamp: Mapped[float] = mapped_column(Float)
    data: Mapped[dict] = mapped_column(JSON, default=dict)

    __table_args__ = (Index("ix_events_tenant_id", "tenant_id", "id"),)


class Snapshot(Base):
    """A verified archive of a cell's writable disk (data, home, tmp)."""

    __tablename__ = "snapshots"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(32))
    cell_id: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    size_bytes: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(16))  # pause | manual | eviction
    namespace_saved: Mapped[bool] = mapped_column(Boolean, default=False)


class TenantUsage(Base):
    """One usage counter of one tenant (cells created, executions, CPU seconds...)."""

    __tablename__ = "tenant_usage"

    tenant_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[float] = mapped_column(Float)


class Receipt(Base):
    """A signed execution receipt; ``sequence`` orders a cell's chain."""

    __tablename__ = "receipts"

    execution_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(32))
    cell_id: Mapped[str] = mapped_column(String(64))
    sequence: Mapped[int] = mapped_column(Integer)
    receipt: Mapped[dict] = mapped_column(JSON)

    __table_args__ = (Index("ix_receipts_cell_sequence", "cell_id", "sequence", unique=True),)


from . import webhook_models  # noqa: E402,F401  (registers the webhook tables on Base)
from . import template_models  # noqa: E402,F401  (registers the template tables on Base)
