"""Writing a batch of usage events: one transaction, each event inserted at most once.

``EventWriter.write`` inserts the batch with ``ON CONFLICT DO NOTHING`` (a report is
unique per ``(user_id, request_id)``, a decision per ``decision_id``) and hands only the
rows really inserted to its handlers, in the same transaction: redelivering a batch
(a replica that died before acknowledging it, a retry after the database came back)
inserts nothing and so adds nothing. The usage rollups are one handler; other records
that ride the same pipeline add theirs.

The common case — every event of the batch is new — is one ``executemany`` through the
driver (``insert_new``, ``run_many``): the inserted count equals the batch. When it does
not (a redelivery, a duplicate within the batch), the insert is undone to a savepoint and
done again with ``RETURNING``, which names the rows that were new.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Column, Connection, Row, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import UpdateBase

from ..usage import LEDGER_KIND, UsageEvent, clamp_units, cost_units, time_units
from .schema import events

__all__ = [
    "StoredEvent", "EventHandler", "EventWriter", "event_row", "dialect_insert", "insert_new",
    "run_many",
]


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as inserted (integer units), what handlers receive (in batch order)."""

    kind: str
    time_us: int
    request_id: str
    decision_id: str
    user_id: str
    group_id: str
    model: str
    requests: int
    input_tokens: int
    output_tokens: int
    cost_nusd: int
    duration_us: int


_RETURNED = tuple(StoredEvent.__dataclass_fields__)


class EventHandler(Protocol):
    def apply(self, connection: Connection, inserted: Sequence[StoredEvent]) -> None:
        """Fold newly inserted events into derived tables (same transaction)."""
        ...


def dialect_insert(connection: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT with the dialect's ``on_conflict_*`` methods."""
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


_COMPILED: dict[tuple[int, str, tuple[str, ...]], tuple[UpdateBase, SQLCompiler]] = {}


def run_many(connection: Connection, statement: UpdateBase, rows: Sequence[dict[str, Any]]) -> int:
    """``statement`` (without RETURNING) once per row, as one ``executemany`` of the
    driver: SQLAlchemy compiles it once for the keys of the rows (cached while the
    statement lives) and does no work per row; every row has the same keys. Returns how many rows the driver says were changed in all."""
    if not rows:
        return 0
    names_given = tuple(rows[0])  # every row has the same keys
    key = (id(statement), connection.dialect.name, names_given)
    cached = _COMPILED.get(key)
    if cached is None or cached[0] is not statement:
        compiled = statement.compile(dialect=connection.dialect, column_keys=list(names_given))
        assert isinstance(compiled, SQLCompiler)
        cached = _COMPILED[key] = (statement, compiled)
    compiled = cached[1]
    fixed = compiled.params  # the statement's own literals (bound, not per row)
    names = compiled.positiontup
    params: list[Any] = (
        [tuple(row[n] if n in row else fixed[n] for n in names) for row in rows]
        if names is not None else [fixed | row for row in rows]
    )
    result = connection.exec_driver_sql(compiled.string, params)
    return int(result.rowcount)


def event_row(event: UsageEvent) -> dict[str, Any]:
    """The ``usage_events`` row of an event (amounts in integer units, clamped)."""
    return {
        "kind": event.kind,
        "time_us": time_units(event.time),
        "request_id": event.request_id,
        "decision_id": event.decision_id,
        "user_id": event.user_id,
        "group_id": event.group_id,
        "model": event.model,
        "requests": 1 if event.counts_request else 0,
        "input_tokens": clamp_units(event.input_tokens),
        "output_tokens": clamp_units(event.output_tokens),
        "cost_nusd": cost_units(event.cost_usd),
        "duration_us": time_units(event.duration_seconds),
        "status": event.status,
        "attributes": json.dumps(dict(event.attributes), sort_keys=True, ensure_ascii=False),
    }


_INSERTS: dict[tuple[str, str], Any] = {}


def insert_new(
    connection: Connection, table: Table, rows: list[dict[str, Any]], returning: Sequence[Column[Any]]
) -> list[Row[Any]] | None:
    """Insert ``rows`` into ``table``, skipping those whose key is there already.

    Returns ``None`` when every row was new — the common case, one ``executemany`` of
    ``INSERT … ON CONFLICT DO NOTHING`` — else the ``returning`` columns of the rows that
    were new: the insert is undone to a savepoint and done again with ``RETURNING``.
    """
    key = (table.name, connection.dialect.name)
    ignoring = _INSERTS.get(key)
    if ignoring is None:  # one object per table, so that ``run_many`` compiles it once
        ignoring = _INSERTS[key] = dialect_insert(connection, table).on_conflict_do_nothing()
    savepoint = connection.begin_nested()
    if run_many(connection, ignoring, rows) == len(rows):
        savepoint.commit()
        return None
    savepoint.rollback()
    stmt = dialect_insert(connection, table).on_conflict_do_nothing().returning(*returning)
    return list(connection.execute(stmt, rows))


class EventWriter:
    """Inserts events and runs the handlers on the ones that were new."""

    def __init__(self, handlers: Iterable[EventHandler] = ()) -> None:
        self.handlers = tuple(handlers)

    def write(self, connection: Connection, batch: Sequence[UsageEvent]) -> int:
        """Insert ``batch`` in the caller's transaction; returns how many were new."""
        if not batch:
            return 0
        # a credit travels as an event of kind "ledger": a ledger entry, no usage
        rows = [event_row(e) for e in batch if e.kind != LEDGER_KIND]
        inserted = self._insert(connection, rows) if rows else []
        for handler in self.handlers:
            handler.apply(connection, inserted)
        return len(inserted)

    def _insert(self, connection: Connection, rows: list[dict[str, Any]]) -> list[StoredEvent]:
        returned = (events.c.id, *(events.c[name] for name in _RETURNED))
        found = insert_new(connection, events, rows, returned)
        if found is None:
            return [StoredEvent(*[row[n] for n in _RETURNED]) for row in rows]
        found.sort(key=lambda row: row[0])  # arrival order
        return [StoredEvent(*tuple(row)[1:]) for row in found]
