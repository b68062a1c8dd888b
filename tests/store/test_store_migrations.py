"""Alembic migrations create exactly the models' schema, and go down and up again cleanly."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from store.db import alembic_config, downgrade, make_engine, upgrade
from store.models import Base

TABLES = {"episodes", "attempts", "episode_tools", "adapters", "training_runs", "leases"}


def schema_diff(url: str) -> list[Any]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def test_upgrade_from_empty_matches_models(database_url: str) -> None:
    assert tables(database_url) == set()
    upgrade(database_url)
    assert tables(database_url) >= TABLES
    assert schema_diff(database_url) == []
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert current_revision(database_url) == head


def test_downgrade_to_base_then_upgrade_again(database_url: str) -> None:
    upgrade(database_url)
    downgrade(database_url, "base")
    assert tables(database_url) & TABLES == set()
    assert current_revision(database_url) is None
    upgrade(database_url, "head")
    assert schema_diff(database_url) == []


def test_diff_detects_a_missing_index(database_url: str) -> None:
    # The comparison above must be able to fail: drop an index and see it reported.
    upgrade(database_url)
    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_episodes_status_created_at")
    engine.dispose()
    diff = schema_diff(database_url)
    assert any(d[0] == "add_index" and d[1].name == "ix_episodes_status_created_at" for d in diff)


def test_partial_unique_index_is_partial(database_url: str) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        indexes = {ix["name"]: ix for ix in inspect(engine).get_indexes("adapters")}
    finally:
        engine.dispose()
    one_active = indexes["uq_adapters_one_active"]
    assert one_active["unique"]
    where = one_active.get("dialect_options", {})
    assert any("active" in str(v) for k, v in where.items() if k.endswith("_where")), where


def test_run_status_check_accepts_every_model_status_and_still_refuses_others(database_url: str) -> None:
    # 0003 recreates the status check with `interrupted`: every status the models know is allowed,
    # an unknown one is still refused by the database itself, after an upgrade from 0002 too.
    import pytest
    from sqlalchemy.exc import IntegrityError

    from store.models import RUN_STATUSES

    upgrade(database_url, "0002")
    upgrade(database_url, "head")
    engine = make_engine(database_url)
    insert = "INSERT INTO training_runs (id, status, created_at) VALUES (:id, :status, CURRENT_TIMESTAMP)"
    try:
        with engine.begin() as conn:
            for status in RUN_STATUSES:
                conn.exec_driver_sql(insert.replace(":id", f"'{status}'").replace(":status", f"'{status}'"))
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.exec_driver_sql(insert.replace(":id", "'x'").replace(":status", "'paused'"))
    finally:
        engine.dispose()
    assert "interrupted" in RUN_STATUSES


def test_failure_codes_are_back_filled_from_the_reasons_stored_before_them(database_url: str) -> None:
    # Verdicts stored under 0003 had only a reason; 0004 derives the code the reason allows.
    reasons = {
        "e1": [
            ("malformed tool call: Expecting value", False),
            ("call 1 get_weather: $: 'city' is a required property (required)", False),
        ],
        "e2": [("get_weather: parameter 'city': 'London' is not 'Paris'", False), (None, True)],
        "e3": [("call 1 names unknown tool 'x'; offered tools: get_weather", False)],
        "e4": [
            ("something no pattern knows", False),
            ("call 1 get_weather: $.unit: 'k' is not one of ['c'] (enum)", False),
        ],
        "e5": [(None, True)],
    }
    upgrade(database_url, "0003")
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            for episode_id, attempts in reasons.items():
                conn.execute(
                    text(
                        "INSERT INTO episodes (id, created_at, status, served_status, prompt_tokens,"
                        " completion_tokens, trainable, purpose)"
                        " VALUES (:e, CURRENT_TIMESTAMP, 'failed', 'failed', 0, 0, false, 'traffic')"
                    ),
                    {"e": episode_id},
                )
                for index, (reason, ok) in enumerate(attempts):
                    conn.execute(
                        text(
                            'INSERT INTO attempts (episode_id, "index", kind, ok, reason, prompt_tokens,'
                            " completion_tokens) VALUES (:e, :i, 'answer', :ok, :reason, 0, 0)"
                        ),
                        {"e": episode_id, "i": index, "ok": ok, "reason": reason},
                    )
    finally:
        engine.dispose()
    upgrade(database_url, "head")
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            codes = dict(conn.execute(text("SELECT id, failure_code FROM episodes")).all())
            attempt_codes = conn.execute(text('SELECT episode_id, "index", code FROM attempts ORDER BY 1, 2')).all()
    finally:
        engine.dispose()
    assert codes == {"e1": "parse_error", "e2": "wrong_value", "e3": "unknown_tool", "e4": None, "e5": None}
    assert [tuple(r) for r in attempt_codes] == [
        ("e1", 0, "parse_error"),
        ("e1", 1, "missing_argument"),
        ("e2", 0, "wrong_value"),
        ("e2", 1, None),
        ("e3", 0, "unknown_tool"),
        ("e4", 0, None),
        ("e4", 1, "schema_violation"),
        ("e5", 0, None),
    ]
