"""Engines, sessions and schema migrations for the store.

Entry points (the API, the learner, the CLI) call ``make_engine`` and ``make_session_factory`` once
per process and ``upgrade`` to bring the schema to the newest Alembic revision. This module does not
read the environment or choose a URL; callers pass one.

SQLite gets WAL, a 30 s busy timeout, foreign keys and ``BEGIN IMMEDIATE`` transactions (a
transaction that reads first and writes later cannot fail on a stale snapshot). File databases are
pooled, and a pooled connection is checked on checkout against the file it opened (device and
inode): a database file moved, deleted or replaced underneath is seen at once as an outage instead
of writes going on into the old file. (Pooling matters: closing the last connection of a WAL
database checkpoints and deletes the WAL, which reopening per transaction paid for every batch.)
PostgreSQL
URLs are normalised to the psycopg 3 driver and pooled with a pre-ping.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

T = TypeVar("T")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000


def normalize_url(url: str) -> str:
    """``postgres://`` and ``postgresql://`` become ``postgresql+psycopg://``; others unchanged."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _is_memory_sqlite(url: str) -> bool:
    parsed = make_url(url)
    return parsed.database in (None, "", ":memory:") or "mode=memory" in str(parsed.query)


def make_engine(url: str, *, sqlite_begin: Literal["immediate", "deferred"] = "immediate", **kw: Any) -> Engine:
    """Create an Engine for ``url`` with the store's connection settings; ``kw`` overrides them."""
    url = normalize_url(url)
    backend = make_url(url).get_backend_name()
    options: dict[str, Any] = {}
    if backend == "sqlite":
        connect_args: dict[str, Any] = {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False}
        options["connect_args"] = connect_args
        if _is_memory_sqlite(url):
            options["poolclass"] = StaticPool
        else:
            options.update(pool_size=5, max_overflow=10, pool_timeout=30)
    elif backend == "postgresql":
        options.update(
            pool_pre_ping=True,
            pool_size=5,
            max_overflow=10,
            pool_timeout=10,
            pool_recycle=1800,
            connect_args={"connect_timeout": 5},
        )
    if "poolclass" in kw:  # sizing options only fit the default QueuePool
        for key in ("pool_size", "max_overflow", "pool_timeout"):
            options.pop(key, None)
    options.update(kw)
    engine = create_engine(url, **options)
    if backend == "sqlite":
        _configure_sqlite(engine, sqlite_begin)
        database = make_url(url).database
        if not _is_memory_sqlite(url) and database:
            _check_sqlite_file(engine, database)
    return engine


def _file_identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _check_sqlite_file(engine: Engine, path: str) -> None:
    """Discard pooled connections whose database file is no longer the one at ``path``."""

    @event.listens_for(engine, "connect")
    def _remember(_dbapi_connection: Any, record: Any) -> None:
        record.info["rrr_file"] = _file_identity(path)

    @event.listens_for(engine, "checkout")
    def _still_there(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        now = _file_identity(path)
        if now is None or now != record.info.get("rrr_file"):
            # the pool closes this connection and connects afresh (which fails while the file is gone)
            raise DisconnectionError(f"the SQLite database file {path} was moved or replaced")


def _configure_sqlite(engine: Engine, begin: str) -> None:
    begin_sql = "BEGIN IMMEDIATE" if begin == "immediate" else "BEGIN"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide where transactions begin (see the "begin" hook).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(begin_sql)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded objects usable after commit (``expire_on_commit=False``)."""
    return sessionmaker(bind=engine, expire_on_commit=False)


def read_with(session_factory: Callable[[], Session], work: Callable[[Session], T]) -> T:
    """`work(session)` in a session of its own, no transaction kept (reads). Blocking: async callers
    run it with `asyncio.to_thread`."""
    with session_factory() as session:
        return work(session)


def write_with(session_factory: Callable[[], Session], work: Callable[[Session], T]) -> T:
    """`work(session)` in one transaction, committed when it returns, rolled back when it raises."""
    with session_factory() as session, session.begin():
        return work(session)


def alembic_config() -> Config:
    """An Alembic config pointing at ``store/migrations`` (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def _run_migration(url: str, action: Literal["upgrade", "downgrade"], revision: str) -> None:
    engine = make_engine(url)
    try:
        with engine.begin() as connection:
            config = alembic_config()
            config.attributes["connection"] = connection
            if action == "upgrade":
                command.upgrade(config, revision)
            else:
                command.downgrade(config, revision)
    finally:
        engine.dispose()


def schema_state(url: str) -> Literal["current", "outdated", "unreachable"]:
    """Whether the database at ``url`` is migrated to the newest revision, or cannot be reached."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy.exc import OperationalError

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
    except OperationalError:
        return "unreachable"
    finally:
        engine.dispose()
    return "current" if current == head else "outdated"


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` up to ``revision`` (default: the newest)."""
    _run_migration(url, "upgrade", revision)


def downgrade(url: str, revision: str) -> None:
    """Migrate the database at ``url`` down to ``revision`` (``"base"`` drops everything)."""
    _run_migration(url, "downgrade", revision)
