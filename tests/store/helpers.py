"""Helpers shared by the store tests: a throwaway PostgreSQL database and an episode factory."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from store.db import make_engine, normalize_url
from store.records import AttemptRecord, EpisodeRecord

PG_ENV = "RRR_TEST_DATABASE_URL"


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
            conn.exec_driver_sql(
                "TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE"
            )
    finally:
        engine.dispose()


T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def make_record(
    *,
    status: str = "first_ok",
    attempts: int = 1,
    tools: tuple[str, ...] = ("get_weather",),
    called: str | None = None,
    adapter: str | None = None,
    task: str | None = None,
    created_at: datetime | None = None,
    minutes: float = 0,
    episode_id: str | None = None,
) -> EpisodeRecord:
    """An episode offering ``tools``; every answer/retry attempt calls ``called`` (default: the first tool)."""
    name = called or tools[0]
    kinds = ["answer", "reflection", "retry"]
    rec = EpisodeRecord(
        status=status,
        messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=[
            {"type": "function", "function": {"name": t, "parameters": {"type": "object"}}} for t in tools
        ],
        tool_choice="auto",
        verifier={"kind": "schema"},
        task=task,
        adapter=adapter,
        model=adapter or "base",
        created_at=created_at or T0 + timedelta(minutes=minutes),
        latency_ms=12,
        attempts=[
            AttemptRecord(
                kind=kinds[i % 3],
                text="thinking" if kinds[i % 3] == "reflection" else None,
                tool_calls=None
                if kinds[i % 3] == "reflection"
                else [{"id": f"c{i}", "type": "function", "function": {"name": name, "arguments": "{}"}}],
                ok=None if kinds[i % 3] == "reflection" else status != "failed",
                prompt_tokens=10,
                completion_tokens=5,
            )
            for i in range(attempts)
        ],
    )
    if episode_id is not None:
        rec.id = episode_id
    return rec
