"""Templates: a tenant's registered specs, and which cells use which build of them.

A template's builds are numbered (``version``); each build's read-only layer is a
directory on disk. ``TemplateCell`` rows say which build a cell mounted, so a
layer is removed only once no live cell uses it.
"""

from __future__ import annotations

from sqlalchemy import JSON, Float, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from .models import Base


class Template(Base):
    __tablename__ = "templates"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(64))
    runtime: Mapped[str] = mapped_column(String(16))
    # The normalized spec; files are listed (path, mode, size, sha256), their bytes live in the layer.
    spec: Mapped[dict] = mapped_column(JSON, default=dict)
    version: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(16))  # building | ready | failed
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
    built_at: Mapped[float | None] = mapped_column(Float, nullable=True)

    __table_args__ = (Index("ix_templates_tenant_name", "tenant_id", "name", unique=True),)


class TemplateCell(Base):
    __tablename__ = "template_cells"

    cell_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    template_id: Mapped[str] = mapped_column(String(40), index=True)
    version: Mapped[int] = mapped_column(Integer)
    # What the cell's container needs again if it is ever restarted (layer, user, workdir).
    options: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[float] = mapped_column(Float)
