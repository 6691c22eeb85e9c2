"""The balance ledger.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "balance_ledger",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("time_us", sa.BigInteger, nullable=False),
        sa.Column("balance", sa.Text, nullable=False),
        sa.Column("entity_key", sa.Text, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("ref", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_balance_ledger"),
    )
    op.create_index(
        "ux_balance_ledger_ref", "balance_ledger", ["balance", "entity_key", "kind", "ref"],
        unique=True,
    )
    op.create_index(
        "ix_balance_ledger_entity", "balance_ledger", ["balance", "entity_key", "id"]
    )


def downgrade() -> None:
    op.drop_table("balance_ledger")
