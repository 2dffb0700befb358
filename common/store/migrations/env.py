"""Alembic's environment for aeknn: the schema is common.store.db's metadata. Run through
``aeknn db upgrade`` (common/migrate.py), which hands over its own connection."""

from __future__ import annotations

from alembic import context

from common.store.db import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes["connection"]
    # render_as_batch: SQLite alters a table by copying it, which later migrations will need
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
