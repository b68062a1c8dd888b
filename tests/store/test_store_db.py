"""Engine settings (SQLite pragmas, URL normalisation) and programmatic migrations."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import exc, inspect, text

from store.db import MIGRATIONS_DIR, make_engine, normalize_url, upgrade


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u@h:5432/d", "postgresql+psycopg://u@h:5432/d"),
        ("postgres://u:p@h/d", "postgresql+psycopg://u:p@h/d"),
        ("postgresql+psycopg://u@h/d", "postgresql+psycopg://u@h/d"),
        ("sqlite:///x.db", "sqlite:///x.db"),
    ],
)
def test_normalize_url(url: str, expected: str) -> None:
    assert normalize_url(url) == expected


def test_sqlite_connection_settings(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30_000
    finally:
        engine.dispose()


def test_foreign_keys_enforced(migrated_url: str) -> None:
    engine = make_engine(migrated_url)
    try:
        with pytest.raises(exc.IntegrityError), engine.begin() as conn:
            conn.execute(text("INSERT INTO episode_tools (episode_id, name) VALUES ('missing', 'x')"))
    finally:
        engine.dispose()


def test_upgrade_twice_is_a_no_op(migrated_url: str) -> None:
    def state() -> tuple[str, dict[str, list[str]]]:
        engine = make_engine(migrated_url)
        try:
            with engine.connect() as conn:
                revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
                inspector = inspect(conn)
                return revision, {
                    t: sorted(c["name"] for c in inspector.get_columns(t)) for t in inspector.get_table_names()
                }
        finally:
            engine.dispose()

    before = state()
    upgrade(migrated_url)
    upgrade(migrated_url, "head")
    assert state() == before and before[0] == "0004"


def test_migrations_ship_inside_the_package() -> None:
    assert MIGRATIONS_DIR.parent.name == "store"
    assert (MIGRATIONS_DIR / "env.py").is_file() and (MIGRATIONS_DIR / "script.py.mako").is_file()
    assert sorted(p.name for p in (MIGRATIONS_DIR / "versions").glob("*.py")) == [
        "0001_initial.py",
        "0002_purpose_warm_start.py",
        "0003_interrupted_runs_lease_heartbeats.py",
        "0004_failure_codes.py",
    ]
