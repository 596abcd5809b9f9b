"""Alembic environment: always runs on a connection handed in by the store."""

from __future__ import annotations

from alembic import context

from nbgateway.management.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only programmatic use is supported
    raise RuntimeError("nbgateway migrations run only through nbgateway.management.migrations")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
