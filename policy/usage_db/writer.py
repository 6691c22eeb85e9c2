"""Writing a batch of usage events: one transaction, each event inserted at most once.

``EventWriter.write`` inserts the batch with ``ON CONFLICT DO NOTHING`` (a report is
unique per ``(user_id, request_id)``, a decision per ``decision_id``) and hands only the
rows really inserted to its handlers, in the same transaction: redelivering a batch
(a replica that died before acknowledging it, a retry after the database came back)
inserts nothing and so adds nothing. The usage rollups are one handler; other records
that ride the same pipeline add theirs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Connection, Table
from sqlalchemy.dialects import postgresql, sqlite

from ..usage import UsageEvent, clamp_units, cost_units, time_units
from .schema import events

__all__ = ["StoredEvent", "EventHandler", "EventWriter", "event_row", "dialect_insert"]


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as inserted (integer units), what handlers receive."""

    id: int
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


class EventWriter:
    """Inserts events and runs the handlers on the ones that were new."""

    def __init__(self, handlers: Iterable[EventHandler] = ()) -> None:
        self.handlers = tuple(handlers)

    def write(self, connection: Connection, batch: Sequence[UsageEvent]) -> int:
        """Insert ``batch`` in the caller's transaction; returns how many were new."""
        if not batch:
            return 0
        stmt = (
            dialect_insert(connection, events)
            .on_conflict_do_nothing()
            .returning(*(events.c[name] for name in _RETURNED))
        )
        result = connection.execute(stmt, [event_row(e) for e in batch])
        inserted = [StoredEvent(*row) for row in result]
        inserted.sort(key=lambda e: e.id)  # arrival order, whatever order RETURNING used
        for handler in self.handlers:
            handler.apply(connection, inserted)
        return len(inserted)
