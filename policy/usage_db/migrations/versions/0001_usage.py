"""Usage events, rollups per period and model, entity counts.

Revision ID: 0001
Revises:
Create Date: 2026-05-01
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.exc import DBAPIError

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

log = logging.getLogger("tollway.usage")

_AMOUNTS = (
    "request_count", "input_tokens", "output_tokens", "total_tokens", "cost_nusd",
    "duration_us", "first_seen_us", "last_seen_us",
)
_SORTS = {
    "last_seen": "last_seen_us",
    "first_seen": "first_seen_us",
    "request_count": "request_count",
    "total_cost": "cost_nusd",
    "total_tokens": "total_tokens",
}
_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _amounts() -> list[sa.Column[Any]]:
    return [sa.Column(name, sa.BigInteger, nullable=False) for name in _AMOUNTS]


def _where(clause: str) -> dict[str, Any]:
    return {"sqlite_where": sa.text(clause), "postgresql_where": sa.text(clause)}


def upgrade() -> None:
    op.create_table(
        "usage_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("time_us", sa.BigInteger, nullable=False),
        sa.Column("request_id", sa.Text, nullable=False),
        sa.Column("decision_id", sa.Text, nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("group_id", sa.Text, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        sa.Column("requests", sa.SmallInteger, nullable=False),
        sa.Column("input_tokens", sa.BigInteger, nullable=False),
        sa.Column("output_tokens", sa.BigInteger, nullable=False),
        sa.Column("cost_nusd", sa.BigInteger, nullable=False),
        sa.Column("duration_us", sa.BigInteger, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("attributes", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_usage_events"),
    )
    op.create_index(
        "ux_usage_events_report", "usage_events", ["user_id", "request_id"], unique=True,
        **_where("kind = 'report'"),
    )
    op.create_index(
        "ux_usage_events_decision", "usage_events", ["decision_id"], unique=True,
        **_where("kind = 'decision'"),
    )
    op.create_index("ix_usage_events_time", "usage_events", ["time_us"])
    op.create_index("ix_usage_events_user_time", "usage_events", ["user_id", "time_us"])
    op.create_index("ix_usage_events_group_time", "usage_events", ["group_id", "time_us"])

    op.create_table(
        "usage_periods",
        sa.Column("entity_kind", sa.String(8), nullable=False),
        sa.Column("span", sa.String(1), nullable=False),
        sa.Column("period", sa.BigInteger, nullable=False),
        sa.Column("entity_id", sa.Text, nullable=False),
        *_amounts(),
        sa.PrimaryKeyConstraint(
            "entity_kind", "span", "period", "entity_id", name="pk_usage_periods"
        ),
    )
    op.create_index(
        "ix_usage_periods_entity", "usage_periods",
        ["entity_kind", "entity_id", "span", "period"],
    )
    for span, label in (("a", "all"), ("m", "month")):
        for field, column in _SORTS.items():
            op.create_index(
                f"ix_usage_periods_{label}_{field}", "usage_periods",
                ["entity_kind", "period", column, "entity_id"], **_where(f"span = '{span}'"),
            )

    op.create_table(
        "usage_model_periods",
        sa.Column("entity_kind", sa.String(8), nullable=False),
        sa.Column("entity_id", sa.Text, nullable=False),
        sa.Column("span", sa.String(1), nullable=False),
        sa.Column("period", sa.BigInteger, nullable=False),
        sa.Column("model", sa.Text, nullable=False),
        *_amounts(),
        sa.PrimaryKeyConstraint(
            "entity_kind", "entity_id", "span", "period", "model", name="pk_usage_model_periods"
        ),
    )
    op.create_table(
        "usage_period_counts",
        sa.Column("entity_kind", sa.String(8), nullable=False),
        sa.Column("span", sa.String(1), nullable=False),
        sa.Column("period", sa.BigInteger, nullable=False),
        sa.Column("entities", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("entity_kind", "span", "period", name="pk_usage_period_counts"),
    )
    if op.get_bind().dialect.name == "postgresql":
        _trigram_index()


def _trigram_index() -> None:
    """``search`` on PostgreSQL: a trigram index over the folded ids of the all-time rows.

    pg_trgm is a trusted extension (PostgreSQL 13+): a database owner may create it. Where
    it cannot be created, search still works, by scanning.
    """
    bind = op.get_bind()
    try:
        with bind.begin_nested():
            bind.execute(sa.text("CREATE EXTENSION IF NOT EXISTS pg_trgm"))
    except DBAPIError as exc:
        log.warning("usage search will scan: cannot create the pg_trgm extension (%s)", exc.orig)
        return
    op.execute(
        "CREATE INDEX ix_usage_periods_search ON usage_periods USING gin "
        f"((translate(entity_id, '{_UPPER}', '{_UPPER.lower()}')) gin_trgm_ops) "
        "WHERE span = 'a'"
    )


def downgrade() -> None:
    for table in ("usage_period_counts", "usage_model_periods", "usage_periods", "usage_events"):
        op.drop_table(table)
