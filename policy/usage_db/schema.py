"""The usage database's tables (SQLAlchemy Core), as the migrations leave them.

- ``usage_events``: one row per usage event. A report is unique per ``(user_id,
  request_id)``, a decision per ``decision_id`` (partial unique indexes), so writing an
  event twice inserts it once.
- ``usage_periods``: per user and per group, per period (``span`` ``a`` all time,
  ``m`` month, ``d`` day, ``h`` hour; ``period`` is its start in unix seconds) the
  summed amounts. Listings read the all-time rows (sort indexes, and a trigram index
  for ``search`` on PostgreSQL) or sum the periods that cover a time span.
- ``usage_model_periods``: the same per model (at most ``max_models`` per entity, the
  rest under ``other``).
- ``usage_period_counts``: how many entities have a row per kind and period, so that a
  listing's ``count`` costs one row read.

Amounts are integers (see ``tollway.policy.usage``): cost in nano-USD, times and
durations in microseconds.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import GenericFunction

__all__ = [
    "metadata",
    "events",
    "periods",
    "model_periods",
    "period_counts",
    "AMOUNTS",
    "SUMMED",
    "SORT_COLUMNS",
    "VERSION_TABLE",
    "folded",
    "sort_index",
]

VERSION_TABLE = "tollway_usage_version"

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

events = Table(
    "usage_events",
    metadata,
    # INTEGER PRIMARY KEY is SQLite's rowid; BIGINT identity on PostgreSQL
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("kind", String(32), nullable=False),
    Column("time_us", BigInteger, nullable=False),
    Column("request_id", Text, nullable=False),
    Column("decision_id", Text, nullable=False),
    Column("user_id", Text, nullable=False),
    Column("group_id", Text, nullable=False),
    Column("model", Text, nullable=False),
    Column("requests", SmallInteger, nullable=False),
    Column("input_tokens", BigInteger, nullable=False),
    Column("output_tokens", BigInteger, nullable=False),
    Column("cost_nusd", BigInteger, nullable=False),
    Column("duration_us", BigInteger, nullable=False),
    Column("status", Text, nullable=False),
    Column("attributes", Text, nullable=False),  # a JSON object
)
Index(
    "ux_usage_events_report",
    events.c.user_id,
    events.c.request_id,
    unique=True,
    sqlite_where=events.c.kind == "report",
    postgresql_where=events.c.kind == "report",
)
Index(
    "ux_usage_events_decision",
    events.c.decision_id,
    unique=True,
    sqlite_where=events.c.kind == "decision",
    postgresql_where=events.c.kind == "decision",
)
Index("ix_usage_events_time", events.c.time_us)
Index("ix_usage_events_user_time", events.c.user_id, events.c.time_us)
Index("ix_usage_events_group_time", events.c.group_id, events.c.time_us)

# The summed columns of every rollup row, in a fixed order (the writer relies on it):
# five sums, then the earliest and latest event time.
SUMMED: tuple[str, ...] = (
    "request_count",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cost_nusd",
    "duration_us",
)
AMOUNTS: tuple[str, ...] = (*SUMMED, "first_seen_us", "last_seen_us")

# listing sort field -> rollup column
SORT_COLUMNS: dict[str, str] = {
    "last_seen": "last_seen_us",
    "first_seen": "first_seen_us",
    "request_count": "request_count",
    "total_cost": "cost_nusd",
    "total_tokens": "total_tokens",
}


def _amount_columns() -> list[Column[Any]]:
    return [Column(name, BigInteger, nullable=False) for name in AMOUNTS]


periods = Table(
    "usage_periods",
    metadata,
    Column("entity_kind", String(8), primary_key=True),
    Column("span", String(1), primary_key=True),
    Column("period", BigInteger, primary_key=True),
    Column("entity_id", Text, primary_key=True),
    *_amount_columns(),
)
Index(
    "ix_usage_periods_entity", periods.c.entity_kind, periods.c.entity_id, periods.c.span,
    periods.c.period,
)
# A listing of all time or of one calendar month is read in index order.
_SORTED_SPANS = {"a": "all", "m": "month"}


def sort_index(span: str, field: str) -> str | None:
    """The index that orders the rollup rows of ``span`` by sort ``field``, if any."""
    label = _SORTED_SPANS.get(span)
    return None if label is None else f"ix_usage_periods_{label}_{field}"


for _span in _SORTED_SPANS:
    for _field, _column in SORT_COLUMNS.items():
        Index(
            sort_index(_span, _field),
            periods.c.entity_kind,
            periods.c.period,
            periods.c[_column],
            periods.c.entity_id,
            sqlite_where=periods.c.span == _span,
            postgresql_where=periods.c.span == _span,
        )

model_periods = Table(
    "usage_model_periods",
    metadata,
    Column("entity_kind", String(8), primary_key=True),
    Column("entity_id", Text, primary_key=True),
    Column("span", String(1), primary_key=True),
    Column("period", BigInteger, primary_key=True),
    Column("model", Text, primary_key=True),
    *_amount_columns(),
)

period_counts = Table(
    "usage_period_counts",
    metadata,
    Column("entity_kind", String(8), primary_key=True),
    Column("span", String(1), primary_key=True),
    Column("period", BigInteger, primary_key=True),
    Column("entities", BigInteger, nullable=False),
)


class folded(GenericFunction[str]):
    """An id with ASCII letters lower-cased (``tollway.policy.usage.fold``), in SQL:
    ``lower()`` on SQLite (which folds ASCII only), ``translate()`` on PostgreSQL
    (whose ``lower()`` follows the locale). The trigram index is built on this."""

    type = Text()
    inherit_cache = True


_UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@compiles(folded)
def _folded_default(element: folded, compiler: Any, **kw: Any) -> str:
    return f"lower({compiler.process(element.clauses, **kw)})"


@compiles(folded, "postgresql")
def _folded_postgresql(element: folded, compiler: Any, **kw: Any) -> str:
    return f"translate({compiler.process(element.clauses, **kw)}, '{_UPPER}', '{_UPPER.lower()}')"

