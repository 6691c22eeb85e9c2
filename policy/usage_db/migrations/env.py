"""Alembic environment of the usage database: migrations run on the connection that
``tollway.policy.usage_db.migrate`` hands over (never from a URL of their own)."""

from __future__ import annotations

from alembic import context

from tollway.policy.usage_db.schema import VERSION_TABLE, metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying
)
with context.begin_transaction():
    context.run_migrations()
