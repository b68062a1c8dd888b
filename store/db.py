"""Engines, sessions and schema migrations for the store.

Entry points (the API, the learner, the CLI) call ``make_engine`` and ``make_session_factory`` once
per process and ``upgrade`` to bring the schema to the newest Alembic revision. This module does not
read the environment or choose a URL; callers pass one.

SQLite gets WAL, a busy timeout (30 s, or the statement timeout), foreign keys and ``BEGIN
IMMEDIATE`` transactions (a transaction that reads first and writes later cannot fail on a stale
snapshot). File databases are pooled, and a pooled connection is checked on checkout against the
file it opened (device and inode): a database file moved, deleted or replaced underneath is seen at
once as an outage instead of writes going on into the old file, and a file that has existed is
never created again (connections open it with ``mode=rw``): a database moved or deleted underneath
stays an outage until it is back, instead of becoming a new empty file. (Pooling matters: closing the last
connection of a WAL database checkpoints and deletes the WAL, which reopening per transaction paid
for every batch.) PostgreSQL URLs are normalised to the psycopg 3 driver and pooled with a pre-ping.

Bounds (R6): every call through an engine from ``make_engine`` waits a bounded time. A pool
checkout waits at most ``pool_timeout_s``; a PostgreSQL connect at most ``connect_timeout_s`` (the
whole handshake, libpq's ``connect_timeout``). With ``statement_timeout_s`` the server cancels a
statement that runs longer, and the client waits at most that plus ``CLIENT_GRACE_S`` for any one
answer (statement, commit, pre-ping): a server that never sees the query — a stalled network or
proxy, connections open but no bytes — cannot cancel it, so past that wait the connection is closed
and the call fails as a disconnect (an ``OperationalError``), and the pool replaces the connection. TCP keepalives
and ``tcp_user_timeout`` end connections to a peer that is gone, within about the same time. On
SQLite the statement timeout is the busy timeout and a statement still running past it is
interrupted; opening a file does not wait.
"""

from __future__ import annotations

import math
import os
import time
import urllib.parse
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
SQLITE_BUSY_TIMEOUT_MS = 30_000  # without a statement timeout
CLIENT_GRACE_S = 2.0  # the client waits this much longer than the server's statement timeout
SQLITE_PROGRESS_STEPS = 10_000  # SQLite VM steps between checks of the statement deadline


def normalize_url(url: str) -> str:
    """``postgres://`` and ``postgresql://`` become ``postgresql+psycopg://``; others unchanged."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _is_memory_sqlite(url: str) -> bool:
    parsed = make_url(url)
    return parsed.database in (None, "", ":memory:") or "mode=memory" in str(parsed.query)


def make_engine(
    url: str,
    *,
    sqlite_begin: Literal["immediate", "deferred"] = "immediate",
    connect_timeout_s: float = 5.0,
    statement_timeout_s: float | None = None,
    pool_timeout_s: float = 10.0,
    **kw: Any,
) -> Engine:
    """Create an Engine for ``url`` with the store's connection settings and bounds (module
    docstring); ``statement_timeout_s`` None or 0 means no statement timeout; ``kw`` overrides them."""
    url = normalize_url(url)
    backend = make_url(url).get_backend_name()
    statement_s = statement_timeout_s or None
    busy_s = statement_s or SQLITE_BUSY_TIMEOUT_MS / 1000
    options: dict[str, Any] = {}
    if backend == "sqlite":
        options["connect_args"] = {"timeout": busy_s, "check_same_thread": False}
        if _is_memory_sqlite(url):
            options["poolclass"] = StaticPool
        else:
            options.update(pool_size=5, max_overflow=10, pool_timeout=pool_timeout_s)
    elif backend == "postgresql":
        options.update(
            pool_pre_ping=True,
            pool_size=5,
            max_overflow=10,
            pool_timeout=pool_timeout_s,
            pool_recycle=1800,
            connect_args=_pg_connect_args(url, connect_timeout_s, statement_s),
        )
    if "poolclass" in kw:  # sizing options only fit the default QueuePool
        for key in ("pool_size", "max_overflow", "pool_timeout"):
            options.pop(key, None)
    options.update(kw)
    engine = create_engine(url, **options)
    if backend == "sqlite":
        _configure_sqlite(engine, sqlite_begin, busy_s, statement_s)
        database = make_url(url).database
        if not _is_memory_sqlite(url) and database:
            _check_sqlite_file(engine, database)
    elif backend == "postgresql" and statement_s is not None:
        _bound_pg_waits(engine, statement_s + CLIENT_GRACE_S)
    return engine


def _pg_connect_args(url: str, connect_timeout_s: float, statement_s: float | None) -> dict[str, Any]:
    """libpq options: the connect timeout, keepalives and a TCP user timeout, the statement timeout."""
    dead_s = max(5, math.ceil(statement_s + CLIENT_GRACE_S if statement_s is not None else 30))
    args: dict[str, Any] = {
        "connect_timeout": max(2, math.ceil(connect_timeout_s)),  # libpq: whole seconds, at least 2
        "keepalives": 1,
        "keepalives_idle": math.ceil(dead_s / 2),
        "keepalives_interval": max(1, math.ceil(dead_s / 6)),
        "keepalives_count": 3,
        "tcp_user_timeout": dead_s * 1000,  # sent data unacknowledged this long: the peer is gone
    }
    if statement_s is not None:
        given = make_url(url).query.get("options")
        own = f"-c statement_timeout={max(1, round(statement_s * 1000))}"
        args["options"] = f"{given} {own}" if isinstance(given, str) and given else own
    return args


def _bound_pg_waits(engine: Engine, wait_s: float) -> None:
    """Connect through a psycopg connection class whose every wait for the server is bounded by ``wait_s``."""
    import psycopg

    found = getattr(psycopg.errors, "_WaitTimeout", None)  # psycopg >= 3.2: waits take a timeout
    if not (isinstance(found, type) and issubclass(found, Exception)):
        return  # then keepalives and the TCP user timeout are the only client-side bound
    wait_timeout: type[Exception] = found

    class BoundedConnection(psycopg.Connection[Any]):
        def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
            if timeout is not None:  # the caller's own bound (e.g. notifies)
                return super().wait(gen, interval, timeout)
            try:
                return super().wait(gen, interval, wait_s)
            except wait_timeout:
                # Where the protocol stands is unknown now: never reuse this connection. Closed, it is
                # a disconnect to SQLAlchemy, which drops it from the pool.
                self.close()
                raise psycopg.OperationalError(
                    f"no answer from the database within {wait_s:g}s; the connection was closed"
                ) from None

    @event.listens_for(engine, "do_connect")
    def _connect(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> Any:
        return BoundedConnection.connect(*cargs, **cparams)


def _file_identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _check_sqlite_file(engine: Engine, path: str) -> None:
    """Discard pooled connections whose database file is no longer the one at ``path``, and never create
    the file again once it has existed: a vanished database is an outage, not a new empty one."""
    existed = [os.path.exists(path)]

    @event.listens_for(engine, "do_connect")
    def _open_existing(_dialect: Any, _record: Any, cargs: Any, cparams: Any) -> None:
        if existed[0] and cargs and isinstance(cargs[0], str) and not cparams.get("uri"):
            cargs[0] = "file:" + urllib.parse.quote(cargs[0]) + "?mode=rw"  # SQLite: open, never create
            cparams["uri"] = True

    @event.listens_for(engine, "connect")
    def _remember(_dbapi_connection: Any, record: Any) -> None:
        existed[0] = True
        record.info["rrr_file"] = _file_identity(path)

    @event.listens_for(engine, "checkout")
    def _still_there(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        now = _file_identity(path)
        if now is None or now != record.info.get("rrr_file"):
            # the pool closes this connection and connects afresh (which fails while the file is gone)
            raise DisconnectionError(f"the SQLite database file {path} was moved or replaced")


def _configure_sqlite(engine: Engine, begin: str, busy_s: float, statement_s: float | None) -> None:
    begin_sql = "BEGIN IMMEDIATE" if begin == "immediate" else "BEGIN"
    busy_ms = max(1, round(busy_s * 1000))

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide where transactions begin (see the "begin" hook).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()
        if statement_s is not None:
            deadline = record.info["rrr_deadline"] = [math.inf]
            # a non-zero return interrupts the running statement ("interrupted", an OperationalError)
            dbapi_connection.set_progress_handler(lambda: time.monotonic() > deadline[0], SQLITE_PROGRESS_STEPS)

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql(begin_sql)

    if statement_s is not None:

        @event.listens_for(engine, "before_cursor_execute")
        def _start(conn: Any, *_args: Any) -> None:
            deadline = conn.info.get("rrr_deadline")
            if deadline is not None:  # its rows are fetched within the same bound
                deadline[0] = time.monotonic() + statement_s

        @event.listens_for(engine, "checkin")
        def _idle(_dbapi_connection: Any, record: Any) -> None:
            deadline = record.info.get("rrr_deadline") if record is not None else None
            if deadline is not None:
                deadline[0] = math.inf


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


def schema_state(url: str, **engine_options: Any) -> Literal["current", "outdated", "unreachable"]:
    """Whether the database at ``url`` is migrated to the newest revision, or cannot be reached
    (``engine_options``: ``make_engine``'s, e.g. its bounds)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy.exc import OperationalError

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    engine = make_engine(url, **engine_options)
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
