"""Keys, cells and events.

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("revoked_at", sa.Float, nullable=True),
    )
    op.create_table(
        "cells",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(32), nullable=False, index=True),
        sa.Column("template", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("last_activity", sa.Float, nullable=False),
        sa.Column("timeout_s", sa.Float, nullable=False),
        sa.Column("persistent", sa.Boolean, nullable=False),
        sa.Column("secure", sa.Boolean, nullable=False),
        sa.Column("allow_internet_access", sa.Boolean, nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("envs", sa.JSON, nullable=False),
        sa.Column("limits", sa.JSON, nullable=False),
        sa.Column("lifecycle", sa.JSON, nullable=False),
        sa.Column("network", sa.JSON, nullable=False),
        sa.Column("executions", sa.Integer, nullable=False),
        sa.Column("runtime", sa.String(32), nullable=False),
        sa.Column("ended_at", sa.Float, nullable=True),
        sa.Column("end_reason", sa.Text, nullable=True),
    )
    op.create_index("ix_cells_tenant_created", "cells", ["tenant_id", "created_at", "id"])
    op.create_table(
        "events",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(32), nullable=False),
        sa.Column("cell_id", sa.String(64), nullable=True, index=True),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("timestamp", sa.Float, nullable=False),
        sa.Column("data", sa.JSON, nullable=False),
    )
    op.create_index("ix_events_tenant_id", "events", ["tenant_id", "id"])


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("cells")
    op.drop_table("api_keys")
