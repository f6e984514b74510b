"""Alembic environment: runs on the connection the connector passes in (``config.attributes``)."""

from __future__ import annotations

from alembic import context

from connector.store.models import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only the `alembic` command line gets here
    raise RuntimeError("run migrations through connector.store.State, which passes a connection")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
