"""Schema migrations: Alembic revisions shipped inside the package (``migrations/``).

``upgrade`` brings a database to this version's schema (``tollway db upgrade``, and
``serve`` on start). A database whose revision this version does not know was migrated
by a newer tollway: ``SchemaTooNew`` is raised and nothing is touched, so an older
replica never writes into a schema it does not understand.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
from collections.abc import Iterator
from importlib import resources
from typing import Literal

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, text

from .schema import VERSION_TABLE

__all__ = ["SchemaTooNew", "SchemaState", "head", "current", "state", "upgrade"]

# pg_advisory_lock key: replicas starting together migrate one after the other
_MIGRATION_LOCK = 0x746F6C6C77617901  # "tollway" + 1


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer tollway than this one."""


SchemaState = Literal["empty", "behind", "current"]


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    location = resources.files("tollway.policy.usage_db").joinpath("migrations")
    config.set_main_option("script_location", str(location))
    config.attributes["connection"] = connection
    return config


def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


@functools.cache
def head() -> str:
    """This version's newest revision."""
    heads = _script().get_heads()
    assert len(heads) == 1, "the usage migrations must form one line"
    return heads[0]


@functools.cache
def _known() -> frozenset[str]:
    return frozenset(r.revision for r in _script().walk_revisions())


def current(connection: Connection) -> str | None:
    """The database's revision (None when it was never migrated)."""
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def state(connection: Connection) -> SchemaState:
    """Where the database stands against this version; raises ``SchemaTooNew``."""
    revision = current(connection)
    if revision is None:
        return "empty"
    if revision == head():
        return "current"
    if revision not in _known():
        raise SchemaTooNew(
            f"the usage database is at schema revision {revision!r}, which this tollway "
            f"(newest revision {head()!r}) does not know: it was migrated by a newer "
            "tollway; run that version, or restore a backup"
        )
    return "behind"


@contextlib.contextmanager
def _file_lock(engine: Engine) -> Iterator[None]:
    """For a SQLite file: an exclusive lock on ``PATH.migrate.lock`` beside it, so that
    processes starting together on one file migrate one after the other (PostgreSQL
    takes an advisory lock instead)."""
    path = engine.url.database
    if engine.dialect.name != "sqlite" or not path:
        yield
        return
    with open(f"{path}.migrate.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def upgrade(engine: Engine) -> bool:
    """Migrate to this version's schema; True when something was applied.

    Raises ``SchemaTooNew`` (nothing touched) and the driver's errors when the database
    cannot be reached.
    """
    with _file_lock(engine), engine.connect() as connection:
        postgres = connection.dialect.name == "postgresql"
        if postgres:
            connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _MIGRATION_LOCK})
            connection.commit()
        try:
            if state(connection) == "current":
                return False
            connection.rollback()
            command.upgrade(_config(connection), "head")
            connection.commit()
            return True
        finally:
            if postgres:
                connection.rollback()
                connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _MIGRATION_LOCK})
                connection.commit()
