"""Alembic environment for the store (run through ``store.db.upgrade``/``downgrade``).

The caller passes an open connection in ``config.attributes["connection"]``; without one (the
``alembic`` CLI with ``store/alembic.ini``), the URL comes from ``-x url=...`` or the
``sqlalchemy.url`` option. Offline (SQL script) mode is not supported.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from store.db import make_engine
from store.models import Base

target_metadata = Base.metadata


def run_with(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_with(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("store migrations need a database URL: alembic -c store/alembic.ini -x url=...")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            run_with(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline migrations are not supported; use store.db.upgrade(url)")
run_online()
