"""Fixtures for the store tests: a fresh database per test on SQLite and (when
``RRR_TEST_DATABASE_URL`` is set) PostgreSQL, migrated with Alembic, and a record factory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from store.db import make_engine, make_session_factory, upgrade
from store.records import EpisodeRecord
from tests.store.helpers import make_record
from tests.support.db import backends, create_pg_database, migrated_database, reset_pg_database


@pytest.fixture(params=backends())
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file in tmp_path, or a fresh PostgreSQL database (dropped after)."""
    if backend == "sqlite":
        (tmp_path / "db").mkdir()
        yield f"sqlite:///{tmp_path / 'db' / 'rrr.db'}"
        return
    url, drop = create_pg_database()
    try:
        yield url
    finally:
        drop()


@pytest.fixture(scope="module")
def pg_module_url() -> Iterator[str]:
    """One migrated PostgreSQL database per test module (creating one costs ~0.5 s)."""
    with migrated_database("postgresql", Path()) as url:
        yield url


@pytest.fixture
def migrated_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A database at the newest revision with no rows: a new SQLite file, or the module's
    PostgreSQL database emptied (other sessions ended, every table truncated)."""
    if backend == "sqlite":
        (tmp_path / "db").mkdir()
        url = f"sqlite:///{tmp_path / 'db' / 'rrr.db'}"
        upgrade(url)
        return url
    url = str(request.getfixturevalue("pg_module_url"))
    reset_pg_database(url)
    return url


@pytest.fixture
def engine(migrated_url: str) -> Iterator[Engine]:
    eng = make_engine(migrated_url)
    yield eng
    eng.dispose()


@pytest.fixture
def session_factory(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


@pytest.fixture
def session(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    with session_factory() as s:
        yield s


@pytest.fixture
def record_factory() -> Callable[..., EpisodeRecord]:
    return make_record
