"""Alembic environment for the AstrID catalog, configured programmatically (no alembic.ini).

``Catalog.migrate()`` builds a ``Config`` with ``script_location`` pointing here and passes an
open connection (already inside a transaction, holding the migration lock) as
``config.attributes["connection"]``. Without one, ``sqlalchemy.url`` is used, so
``alembic -x``-style use from a shell also works::

    cfg = Config(); cfg.set_main_option("script_location", "plugins/astrid/catalog/migrations")
    cfg.set_main_option("sqlalchemy.url", url); command.upgrade(cfg, "head")

SQLite gets ``render_as_batch=True`` so later ALTERs are done by table copy.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from astrid.catalog.models import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection: sa.Connection | None = None, url: str | None = None) -> None:
    dialect = connection.dialect.name if connection is not None else sa.make_url(url).get_backend_name()
    context.configure(
        connection=connection,
        url=url,
        target_metadata=target_metadata,
        render_as_batch=dialect == "sqlite",
        compare_type=True,
        literal_binds=connection is None,
    )


def run_migrations_offline() -> None:
    _configure(url=config.get_main_option("sqlalchemy.url"))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = sa.create_engine(config.get_main_option("sqlalchemy.url"), poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            _configure(conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
