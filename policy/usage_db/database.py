"""Opening the usage database from a URL: drivers, connection pools, SQLite pragmas.

URLs: ``sqlite:///PATH`` (relative to the working directory; ``sqlite:////abs/path``),
``postgresql://USER@HOST:PORT/DB`` (``postgres://`` too; the psycopg 3 driver is chosen
here, so plain URLs work), and ``memory``: a private in-memory SQLite database, for tests
and embedding, reached through one shared connection.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import StaticPool

__all__ = ["Backend", "DEFAULT_URL", "create_sql_engine", "backend_of", "redact_url"]

Backend = Literal["sqlite", "postgresql"]
DEFAULT_URL = "sqlite:///tollway-usage.db"


def _parse(url: str) -> URL:
    if url == "memory":
        return make_url("sqlite://")
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ValueError(f"usage_db: {redact_url(url)!r} is not a database URL") from None
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        if not parsed.database:
            raise ValueError("usage_db: sqlite:///PATH needs a path (or use 'memory')")
        return parsed.set(drivername="sqlite+pysqlite")
    raise ValueError(
        f"usage_db: {redact_url(url)!r}: use sqlite:///PATH, postgresql://… or memory"
    )


def backend_of(engine: Engine) -> Backend:
    return "postgresql" if engine.dialect.name == "postgresql" else "sqlite"


def create_sql_engine(
    url: str, *, pool_size: int = 8, connection: sqlite3.Connection | None = None
) -> Engine:
    """A SQLAlchemy engine for ``url``; raises ``ValueError`` for a URL it cannot use.

    Nothing is connected yet: an unreachable database is noticed by the first call.
    ``connection`` is the one connection of a ``memory`` database (made here if None).
    """
    parsed = _parse(url)
    if parsed.drivername.startswith("postgresql"):
        engine = create_engine(
            parsed,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_pre_ping=True,  # connections die with a restarted server: test on checkout
            pool_timeout=10,
            connect_args={"connect_timeout": 3, "application_name": "tollway"},
        )
        _custom_plans(engine)
        return engine
    if parsed.database is None:  # memory: one connection, one database, for every thread
        raw = connection or sqlite3.connect(":memory:", check_same_thread=False)
        engine = create_engine(parsed, poolclass=StaticPool, creator=lambda: raw)
    else:
        engine = create_engine(parsed, connect_args={"timeout": 30, "check_same_thread": False})
    _sqlite_transactions(engine, in_memory=parsed.database is None)
    return engine


def _custom_plans(engine: Engine) -> None:
    """Plan every PostgreSQL statement with its values. psycopg prepares a statement run
    five times, and PostgreSQL then may switch to a generic plan, which cannot use a
    partial index (``span = $1`` proves no ``WHERE span = 'a'``) nor tell that a search
    pattern suits the trigram index: a repeated search went from 40 ms to 900 ms."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        dbapi_connection.execute("SET plan_cache_mode = force_custom_plan")
        dbapi_connection.autocommit = autocommit


def _sqlite_transactions(engine: Engine, *, in_memory: bool) -> None:
    """Let SQLAlchemy, not the sqlite3 module, say when transactions begin (the sqlite3
    module's implicit BEGIN skips SELECTs, so a count and a page could see different
    data); WAL lets readers run beside the one writer."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN")


def redact_url(url: str) -> str:
    """The URL without its password, for logs and messages (any scheme, a host list too)."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if not at or not colon:
        return url
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hosts}"))
