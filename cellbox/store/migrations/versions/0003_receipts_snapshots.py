"""Signed execution receipts; snapshots; pause bookkeeping and id ranges on cells.

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "receipts",
        sa.Column("execution_id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(32), nullable=False),
        sa.Column("cell_id", sa.String(64), nullable=False),
        sa.Column("sequence", sa.Integer, nullable=False),
        sa.Column("receipt", sa.JSON, nullable=False),
    )
    op.create_index("ix_receipts_cell_sequence", "receipts", ["cell_id", "sequence"], unique=True)
    op.create_table(
        "snapshots",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(32), nullable=False),
        sa.Column("cell_id", sa.String(64), nullable=False, index=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column("digest", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("namespace_saved", sa.Boolean, nullable=False),
    )
    with op.batch_alter_table("cells") as batch:
        batch.add_column(sa.Column("paused_at", sa.Float, nullable=True))
        batch.add_column(sa.Column("evicted", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("source_snapshot_id", sa.String(40), nullable=True))
        batch.add_column(sa.Column("id_slot", sa.Integer, nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("cells") as batch:
        batch.drop_column("id_slot")
        batch.drop_column("source_snapshot_id")
        batch.drop_column("evicted")
        batch.drop_column("paused_at")
    op.drop_table("snapshots")
    op.drop_table("receipts")
