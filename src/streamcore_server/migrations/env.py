"""Alembic environment: runs on the connection the app hands over (see storage.migrate)."""

from __future__ import annotations

from alembic import context

from streamcore_server.storage import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "run migrations through streamcore_server.storage.migrate, which supplies a connection"
    )

# Batch mode lets ALTERs work on SQLite, which rebuilds the table instead.
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
