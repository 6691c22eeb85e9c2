"""The balance ledger: every credit and every amount spent from a balance, one row each.

Rows arrive with the usage events they rode (``UsageEvent.ledger``), in the same
transaction, and are unique per ``(balance, entity_key, kind, ref)`` so that a batch
delivered twice adds nothing. Retention never deletes them: a balance is the sum of its
rows, which is what the counter store's live balances are rebuilt from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Index,
    Integer,
    String,
    Table,
    Text,
    func,
    select,
)

from ..usage import LedgerEntry, UsageEvent, time_units
from .schema import metadata
from .writer import insert_new

__all__ = ["ledger", "LedgerRow", "write_entries", "totals", "latest", "has_ref"]

ledger = Table(
    "balance_ledger",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("time_us", BigInteger, nullable=False),
    Column("balance", Text, nullable=False),
    Column("entity_key", Text, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("amount", BigInteger, nullable=False),  # balance units, signed
    Column("reason", Text, nullable=False),
    Column("ref", Text, nullable=False),
)
Index(
    "ux_balance_ledger_ref", ledger.c.balance, ledger.c.entity_key, ledger.c.kind, ledger.c.ref,
    unique=True,
)
Index("ix_balance_ledger_entity", ledger.c.balance, ledger.c.entity_key, ledger.c.id)

LedgerRow = tuple[float, LedgerEntry]


def write_entries(connection: Connection, batch: Sequence[UsageEvent]) -> int:
    """Insert the ledger entries the events carry (those stored already are skipped)."""
    rows: list[dict[str, Any]] = [
        {
            "time_us": time_units(event.time),
            "balance": entry.balance,
            "entity_key": entry.key,
            "kind": entry.kind,
            "amount": entry.amount,
            "reason": entry.reason,
            "ref": entry.ref,
        }
        for event in batch
        for entry in event.ledger
    ]
    if not rows:
        return 0
    found = insert_new(connection, ledger, rows, (ledger.c.id,))
    return len(rows) if found is None else len(found)


def totals(connection: Connection) -> dict[tuple[str, str], int]:
    """(balance, entity key) -> the sum of its entries."""
    c = ledger.c
    query = select(c.balance, c.entity_key, func.sum(c.amount)).group_by(c.balance, c.entity_key)
    return {(b, k): int(total) for b, k, total in connection.execute(query)}


def latest(connection: Connection, balance: str, key: str, limit: int) -> list[LedgerRow]:
    """The newest ``limit`` entries of one balance, newest first."""
    c = ledger.c
    query = (
        select(c.time_us, c.kind, c.amount, c.reason, c.ref)
        .where(c.balance == balance, c.entity_key == key)
        .order_by(c.id.desc())
        .limit(limit)
    )
    return [
        (time_us / 1_000_000, LedgerEntry(balance, key, int(amount), kind, reason, ref))
        for time_us, kind, amount, reason, ref in connection.execute(query)
    ]


def has_ref(connection: Connection, balance: str, key: str, kind: str, ref: str) -> bool:
    c = ledger.c
    query = select(c.id).where(
        c.balance == balance, c.entity_key == key, c.kind == kind, c.ref == ref
    )
    return connection.execute(query.limit(1)).first() is not None
