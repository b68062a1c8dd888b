"""Test databases on both backends: SQLite files, and PostgreSQL when RRR_TEST_DATABASE_URL is set.

Who uses it: the conftest files of tests/store, tests/api and tests/learner. Every PostgreSQL
database is created with a unique name on the server of $RRR_TEST_DATABASE_URL and dropped after.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from store.db import make_engine, normalize_url, upgrade

PG_ENV = "RRR_TEST_DATABASE_URL"


def backends() -> list[Any]:
    """Parameters for a fixture run on each backend: SQLite always, PostgreSQL when configured."""
    params: list[Any] = [pytest.param("sqlite", id="sqlite")]
    if os.environ.get(PG_ENV):
        params.append(pytest.param("postgresql", id="pg", marks=pytest.mark.pg))
    return params


def create_pg_database() -> tuple[str, Callable[[], None]]:
    """A new, uniquely named database on the server of $RRR_TEST_DATABASE_URL, and its dropper."""
    base = normalize_url(os.environ[PG_ENV])
    name = f"rrr_test_{uuid.uuid4().hex[:16]}"
    admin = make_engine(base, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    return make_url(base).set(database=name).render_as_string(hide_password=False), drop


@contextmanager
def migrated_database(backend: str, folder: Path) -> Iterator[str]:
    """The URL of an empty database at the newest revision: a SQLite file in ``folder``, or a new
    PostgreSQL database (dropped on exit)."""
    if backend == "sqlite":
        url = f"sqlite:///{folder / 'rrr.db'}"
        upgrade(url)
        yield url
        return
    url, drop = create_pg_database()
    try:
        upgrade(url)
        yield url
    finally:
        drop()


def reset_pg_database(url: str) -> None:
    """End every other session on the database at ``url`` and empty all its tables but alembic's."""
    engine = make_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            tables = [
                name
                for (name,) in conn.exec_driver_sql(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
                )
            ]
            conn.exec_driver_sql("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE")
    finally:
        engine.dispose()
