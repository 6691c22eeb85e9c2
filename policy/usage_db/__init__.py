"""The usage database: durable per-user and per-group usage in SQLite or PostgreSQL.

``UsageDatabase`` is the one object the engine talks to: ``prepare`` migrates (or
refuses a newer schema), ``write`` stores a batch of events in one transaction, the
query methods read, ``purge`` applies retention. Database errors that mean "cannot
answer now" surface as ``UsageUnavailable``.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from sqlalchemy import Connection, Engine, delete, select
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from ..usage import (
    RECENT_REPORTS,
    LedgerEntry,
    Spike,
    UsageDetail,
    UsageEvent,
    UsageSeries,
    UsageUnavailable,
)
from ..usage_query import ActivityQuery, SeriesQuery, SpikeQuery, UsagePage, UsageQuery
from ..validate import need_id, need_kind
from . import ledger, migrate, reader
from .database import DEFAULT_URL, Backend, backend_of, create_sql_engine, redact_url
from .migrate import SchemaTooNew
from .rollups import DEFAULT_MAX_MODELS, OTHER_MODEL, UsageRollups
from .schema import events
from .writer import EventHandler, EventWriter

__all__ = [
    "UsageDatabase",
    "SchemaTooNew",
    "DEFAULT_URL",
    "DEFAULT_RETENTION_DAYS",
    "DEFAULT_MAX_MODELS",
    "OTHER_MODEL",
]

DEFAULT_RETENTION_DAYS = 400
_PURGE_BATCH = 10_000


def _unavailable(exc: BaseException) -> bool:
    """Whether a database error means "not reachable now" (retry later) rather than a bug."""
    if isinstance(exc, OperationalError | OSError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


class UsageDatabase:
    """Usage events and rollups at ``url`` (see ``database`` for the URL forms).

    Thread safe: each call takes a pooled connection (an in-memory database has one,
    shared under a lock).
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        max_models: int = DEFAULT_MAX_MODELS,
        retention_days: float = DEFAULT_RETENTION_DAYS,
        clock: Callable[[], float] = time.time,
        handlers: Sequence[EventHandler] = (),
    ) -> None:
        if not retention_days > 0:
            raise ValueError("usage_retention: must be a positive number of days")
        self.url = url
        self.engine = create_sql_engine(url, connection=_migrated_memory() if url == "memory" else None)
        self.backend: Backend = backend_of(self.engine)
        self.retention_days = retention_days
        self._clock = clock
        self._writer = EventWriter([UsageRollups(max_models), *handlers])
        self._shared = threading.RLock() if url == "memory" else None
        self._prepared = False

    def __repr__(self) -> str:
        return f"UsageDatabase({redact_url(self.url)!r})"

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Connection]:
        with self._shared or contextlib.nullcontext(), self.engine.connect() as connection:
            yield connection

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except SQLAlchemyError as exc:
            if _unavailable(exc):
                raise UsageUnavailable(f"usage database: {_reason(exc)}") from exc
            raise

    # ------------------------------------------------------------------ lifecycle

    @property
    def prepared(self) -> bool:
        return self._prepared

    def prepare(self) -> bool:
        """Migrate to this version's schema (once); True when a migration was applied.

        Raises ``SchemaTooNew`` (nothing touched) or ``UsageUnavailable``.
        """
        if self._prepared:
            return False
        with self._shared or contextlib.nullcontext(), self._guard():
            applied = migrate.upgrade(self.engine)
        self._prepared = True
        return applied

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ writing

    def write(self, batch: Sequence[UsageEvent]) -> int:
        """Store ``batch`` in one transaction; returns how many events were new (the
        others were already stored: nothing of theirs is added again)."""
        self.prepare()
        with self._guard(), self._connection() as connection, connection.begin():
            stored = self._writer.write(connection, batch)
            if any(e.ledger for e in batch):
                ledger.write_entries(connection, batch)
            return stored

    def purge(self, now: float | None = None) -> int:
        """Delete events older than the retention, in batches (rollups stay); returns
        how many were deleted."""
        self.prepare()
        now = self._clock() if now is None else now
        horizon = round((now - self.retention_days * 86400) * 1_000_000)
        deleted = 0
        e = events.c
        while True:
            with self._guard(), self._connection() as connection, connection.begin():
                oldest = select(e.id).where(e.time_us < horizon).limit(_PURGE_BATCH)
                count = connection.execute(delete(events).where(e.id.in_(oldest))).rowcount
            deleted += count
            if count < _PURGE_BATCH:
                return deleted

    def horizon(self, now: float | None = None) -> float:
        """Events older than this (unix seconds) are past the retention."""
        return (self._clock() if now is None else now) - self.retention_days * 86400

    # ------------------------------------------------------------------ reading

    def _read(self, call: Callable[[Connection], object]) -> object:
        """Run ``call`` in one read transaction: a count and its page see one snapshot."""
        self.prepare()
        with self._guard(), self._connection() as connection:
            if self.backend == "postgresql":
                connection = connection.execution_options(isolation_level="REPEATABLE READ")
            with connection.begin():
                return call(connection)

    def detail(self, kind: str, ident: str) -> UsageDetail | None:
        entity = need_kind(kind)
        ident = need_id(ident, f"{entity}_id")
        found = self._read(lambda c: reader.get_detail(c, entity, ident, RECENT_REPORTS))
        return found  # type: ignore[return-value]

    def page(self, query: UsageQuery) -> UsagePage:
        now = self._clock()
        return self._read(lambda c: reader.list_usage(c, query, now))  # type: ignore[return-value]

    def series(self, kind: str, ident: str, query: SeriesQuery) -> UsageSeries | None:
        entity, now = need_kind(kind), self._clock()
        ident = need_id(ident, f"{entity}_id")
        found = self._read(lambda c: reader.series(c, entity, ident, query, now))
        return found  # type: ignore[return-value]

    def spikes(self, query: SpikeQuery) -> list[Spike]:
        now = self._clock()
        return self._read(lambda c: reader.spikes(c, query, now))  # type: ignore[return-value]

    # ------------------------------------------------------------------ balances

    def balance_totals(self) -> dict[tuple[str, str], int]:
        """(balance, scope key) -> the sum of its ledger entries, in balance units."""
        return self._read(ledger.totals)  # type: ignore[return-value]

    def ledger_entries(
        self, balance: str, key: str, limit: int = RECENT_REPORTS
    ) -> list[tuple[float, LedgerEntry]]:
        """The newest ``limit`` ledger entries of one balance (time, entry), newest first."""
        found = self._read(lambda c: ledger.latest(c, balance, key, limit))
        return found  # type: ignore[return-value]

    def has_credit(self, balance: str, key: str, ref: str) -> bool:
        """Whether a credit with idempotency key ``ref`` is in the ledger."""
        found = self._read(lambda c: ledger.has_ref(c, balance, key, "credit", ref))
        return bool(found)

    def activity(self, query: ActivityQuery) -> Iterator[UsageEvent]:
        """Matching reports, newest first, streamed; the connection is held until the
        iterator is exhausted or closed."""
        self.prepare()
        with self._guard(), self._connection() as connection, connection.begin():
            stream = reader.activity(connection, query)
            while True:
                with self._guard():
                    event = next(stream, None)
                if event is None:
                    return
                yield event


_TEMPLATE_LOCK = threading.Lock()


@functools.cache
def _memory_template() -> tuple[sqlite3.Connection, Engine]:
    """An in-memory database migrated once per process, copied by every ``memory`` one
    (the engine is kept: disposing of it would close the connection)."""
    raw = sqlite3.connect(":memory:", check_same_thread=False)
    engine = create_sql_engine("memory", connection=raw)
    migrate.upgrade(engine)
    return raw, engine


def _migrated_memory() -> sqlite3.Connection:
    """A new in-memory database with this version's schema (a copy of the template: a
    millisecond, where running the migrations takes tens)."""
    raw = sqlite3.connect(":memory:", check_same_thread=False)
    with _TEMPLATE_LOCK:
        _memory_template()[0].backup(raw)
    return raw


def _reason(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
