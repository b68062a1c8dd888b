"""R6 when the database stalls instead of refusing: the store's bounds and the writer's deadline.

A stall is real: PostgreSQL behind ``tests.store.tcp_forwarder.TCPForwarder`` blackholed (connections
open, no bytes), or SQLite with its write lock held by another connection.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from store.db import make_engine
from store.models import Attempt, Episode
from store.writer import EpisodeWriter
from tests.store.helpers import make_record
from tests.store.tcp_forwarder import TCPForwarder
from tests.support.db import PG_ENV

GENEROUS_S = 8.0  # a bounded wait ends well within this (bounds below are a second or two)


def _wait_for(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def _counts(url: str) -> tuple[int, int]:
    engine = make_engine(url, poolclass=NullPool)
    try:
        with Session(engine) as s:
            episodes = s.execute(select(func.count(func.distinct(Episode.id)))).scalar_one()
            return int(episodes), int(s.execute(select(func.count()).select_from(Attempt)).scalar_one())
    finally:
        engine.dispose()


@dataclass
class Stall:
    writer_url: str
    begin: Callable[[], None]
    end: Callable[[], None]


@pytest.fixture
def stall(migrated_url: str) -> Iterator[Stall]:
    """A URL whose database can be made to stall (accept work, never finish it) and resume."""
    url = make_url(migrated_url)
    if url.get_backend_name() == "sqlite":
        holder = sqlite3.connect(str(url.database), isolation_level=None, check_same_thread=False)

        def hold_the_write_lock() -> None:
            holder.execute("BEGIN IMMEDIATE")

        yield Stall(migrated_url, hold_the_write_lock, lambda: holder.execute("ROLLBACK"))
        holder.close()
        return
    forwarder = TCPForwarder(url.host or "127.0.0.1", url.port or 5432)
    forwarder.start()
    try:
        through = url.set(host="127.0.0.1", port=forwarder.port).render_as_string(hide_password=False)
        yield Stall(through, forwarder.blackhole, forwarder.resume)
    finally:
        forwarder.resume()
        forwarder.stop()


def test_a_write_stalled_past_its_deadline_spools_and_nothing_is_lost_or_doubled(
    migrated_url: str, stall: Stall, tmp_path: Path
) -> None:
    """The engine here has no bounds of its own (no statement timeout): only the writer's deadline
    notices the stall. Degraded within seconds, every record spooled meanwhile; after the stall the
    stalled write may commit after all and the spool is replayed — each episode stored once."""
    engine = make_engine(stall.writer_url)
    writer = EpisodeWriter(engine, tmp_path / "spool.jsonl", batch_size=20, retry_interval_s=0.1, write_timeout_s=0.5)
    try:
        first = [make_record(attempts=2) for _ in range(30)]
        during = [make_record(attempts=3) for _ in range(100)]
        after = [make_record(attempts=1) for _ in range(20)]
        for r in first:
            assert writer.submit(r)
        assert writer.flush(20) and writer.stats()["written"] == 30

        stall.begin()
        try:
            started = time.monotonic()
            for r in during:
                assert writer.submit(r)
            assert writer.flush(GENEROUS_S), writer.stats()  # handled (spooled) while the database stalls
            mid = writer.stats()
            assert mid["degraded"] is True and time.monotonic() - started < GENEROUS_S
            assert mid["spooled"] == 100 and mid["written"] == 30 and mid["dropped"] == 0, mid
            time.sleep(0.3)  # recovery attempts while the stalled write is still out: none may start
            assert writer.stats()["degraded"] is True
        finally:
            stall.end()

        _wait_for(lambda: not writer.stats()["degraded"], 30)
        for r in after:
            assert writer.submit(r)
        assert writer.close(timeout=30)
    finally:
        writer.close(timeout=5)
        engine.dispose()
    stats = writer.stats()
    assert stats["replayed"] == stats["spooled"] == 100 and stats["written"] == 50, stats
    assert stats["dropped"] == 0 and stats["queued"] == 150
    assert _counts(migrated_url) == (150, 30 * 2 + 100 * 3 + 20)


def test_a_sqlite_statement_past_its_timeout_is_interrupted(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'rrr.db'}", statement_timeout_s=0.3)
    endless = text("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 300  # the lock wait is bounded too
            started = time.monotonic()
            with pytest.raises(OperationalError, match="interrupted"):
                conn.execute(endless)
            assert time.monotonic() - started < GENEROUS_S
            conn.rollback()
            assert conn.execute(text("SELECT 1")).scalar() == 1  # the next statement has a deadline of its own
    finally:
        engine.dispose()


@pytest.mark.pg
@pytest.mark.skipif(not os.environ.get(PG_ENV), reason=f"needs {PG_ENV}")
def test_a_stalled_postgresql_connection_is_dropped_within_its_bound_and_the_pool_recovers(pg_module_url: str) -> None:
    url = make_url(pg_module_url)
    forwarder = TCPForwarder(url.host or "127.0.0.1", url.port or 5432)
    forwarder.start()
    through = url.set(host="127.0.0.1", port=forwarder.port).render_as_string(hide_password=False)
    engine = make_engine(through, connect_timeout_s=2, statement_timeout_s=0.5, pool_timeout_s=1)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SHOW statement_timeout")).scalar() == "500ms"
            params = conn.connection.dbapi_connection.info.get_parameters()  # type: ignore[union-attr]
            assert params["keepalives"] == "1" and int(params["tcp_user_timeout"]) > 0
            forwarder.blackhole()  # the server never sees what follows, so its statement timeout cannot help
            started = time.monotonic()
            with pytest.raises(OperationalError, match="no answer from the database"):
                conn.execute(text("SELECT 1"))
            assert time.monotonic() - started < GENEROUS_S
            assert conn.invalidated  # never reused
        started = time.monotonic()
        with pytest.raises(OperationalError), engine.connect() as conn:  # a new connection: the connect timeout
            conn.execute(text("SELECT 1"))
        assert time.monotonic() - started < GENEROUS_S
        forwarder.resume()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        forwarder.resume()
        engine.dispose()
        forwarder.stop()
