"""R8: values that validate are stored, and read back, identically on SQLite and PostgreSQL.

Policy (store/sanitize.py): NUL → U+FFFD, lone surrogate → U+FFFD (pairs joined), NaN/±Infinity in
JSON → null, strings cut to the column's length, integer columns clamped to 32 bits. Also: timestamps are
UTC whatever the session zone.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from store import repos
from store.db import make_engine, make_session_factory, upgrade
from store.records import EpisodeRecord
from store.sanitize import clamp_int32, clean_json, clean_text
from store.writer import EpisodeWriter
from tests.store.helpers import T0, make_record
from tests.support.db import PG_ENV, create_pg_database

NAN, INF = float("nan"), float("inf")


def test_clean_text_policy() -> None:
    assert clean_text("plain") == "plain"
    assert clean_text("a\x00b") == "a\ufffdb"
    assert clean_text("lone \ud800 and \udfff") == "lone \ufffd and \ufffd"
    assert clean_text("pair \ud83d\ude00") == "pair \U0001f600"
    assert clean_text("\ude00\ud83d") == "\ufffd\ufffd"  # reversed pair is two lone halves
    assert clean_text("\x00\ud800\x00") == "\ufffd\ufffd\ufffd"


def test_clamp_int32() -> None:
    assert [clamp_int32(v) for v in (5, 2**40, -(2**40), 3.9, NAN, INF, -INF)] == [
        5,
        2**31 - 1,
        -(2**31),
        3,
        0,
        2**31 - 1,
        -(2**31),
    ]


def test_clean_json_policy() -> None:
    value = {"a\x00": [NAN, INF, -INF, 1.5, 10**30, True, None, ("t", "\ud800")], 3: {"x": float("-nan")}}
    assert clean_json(value) == {
        "a\ufffd": [None, None, None, 1.5, 10**30, True, None, ["t", "\ufffd"]],
        3: {"x": None},
    }
    assert clean_json({"when": T0}) == {"when": str(T0)}


def hostile_record() -> EpisodeRecord:
    rec = make_record(status="failed", attempts=3, tools=("get_\x00weather",), task="t\x00ask\ud800" + "x" * 300)
    rec.messages = [
        {"role": "user", "content": "nul\x00 here \ud800 lone, pair \ud83d\ude00 joined"},
        {"k\x00ey": [NAN, INF, -INF, 1.5, 10**30]},
    ]
    rec.verifier = {"kind": "reference", "tol": NAN, "nested": {"x": [INF, "\x00"]}}
    rec.expected_calls = [{"name": "f", "arguments": {"v": -INF}}]
    rec.error = "boom\x00\udfff"
    rec.client_key_id = "k" * 100
    rec.latency_ms = 10**12
    rec.prompt_tokens = -(10**15)
    rec.attempts[0].text = "\x00\ud800"
    rec.attempts[0].details = {"score": NAN, "why\x00": "bad \udc00"}
    rec.attempts[1].text = "reflect \x00"
    return rec


def expected_snapshot(rec: EpisodeRecord) -> dict[str, Any]:
    """What the policy says must be stored for ``hostile_record`` (written out by hand)."""
    return {
        "task": ("t\ufffdask\ufffd" + "x" * 300)[:200],
        "client_key_id": "k" * 64,
        "ints": (2**31 - 1, -(2**31)),
        "request_messages": [
            {"role": "user", "content": "nul\ufffd here \ufffd lone, pair \U0001f600 joined"},
            {"k\ufffdey": [None, None, None, 1.5, 10**30]},
        ],
        "verifier": {"kind": "reference", "tol": None, "nested": {"x": [None, "\ufffd"]}},
        "expected_calls": [{"name": "f", "arguments": {"v": None}}],
        "error": "boom\ufffd\ufffd",
        "status": "failed",
        "created_at": rec.created_at,
        "attempt_texts": ["\ufffd\ufffd", "reflect \ufffd", None],
        "attempt0_details": {"score": None, "why\ufffd": "bad \ufffd"},
        "tools": [{"type": "function", "function": {"name": "get_\ufffdweather", "parameters": {"type": "object"}}}],
    }


def snapshot(session: Session, episode_id: str) -> dict[str, Any]:
    ep = repos.get_episode(session, episode_id)
    assert ep is not None
    return {
        "task": ep.task,
        "client_key_id": ep.client_key_id,
        "ints": (ep.latency_ms, ep.prompt_tokens),
        "request_messages": ep.request_messages,
        "verifier": ep.verifier,
        "expected_calls": ep.expected_calls,
        "error": ep.error,
        "status": ep.status,
        "created_at": ep.created_at,
        "attempt_texts": [a.text for a in ep.attempts],
        "attempt0_details": ep.attempts[0].details,
        "tools": ep.request_tools,
    }


@pytest.mark.parametrize("via", ["direct", "spool"])
def test_hostile_values_are_stored_by_policy(migrated_url: str, tmp_path: Path, via: str) -> None:
    rec = hostile_record()
    spool = tmp_path / "spool.jsonl"
    if via == "spool":  # first spooled by a writer whose database is down, then replayed
        dead = EpisodeWriter(make_engine(f"sqlite:///{tmp_path / 'missing' / 'x.db'}"), spool, retry_interval_s=60)
        dead.submit(rec)
        assert dead.close(10) and dead.stats()["spooled"] == 1
    engine = make_engine(migrated_url)
    writer = EpisodeWriter(engine, spool, retry_interval_s=0.05)
    if via == "direct":
        writer.submit(rec)
    assert writer.flush(10)
    assert writer.close(10)
    stats = writer.stats()
    assert stats["dropped"] == 0 and stats["written"] + stats["replayed"] == 1
    with make_session_factory(engine)() as s:
        assert snapshot(s, rec.id) == expected_snapshot(rec)
        # filters go through the same policy, so the raw value finds the stored one
        assert [e.id for e in repos.list_episodes(s, tool="get_\x00weather").items] == [rec.id]
        assert [e.id for e in repos.list_episodes(s, task=rec.task).items] == [rec.id]
    with make_session_factory(engine).begin() as s:
        fed = repos.set_feedback(s, rec.id, ok=False, reason="r\x00", expected_calls=[{"v": NAN}])
        assert fed is not None
    with make_session_factory(engine)() as s:
        ep = repos.get_episode(s, rec.id)
        assert ep is not None and ep.feedback_reason == "r\ufffd" and ep.feedback_expected_calls == [{"v": None}]
    engine.dispose()


@pytest.mark.pg
@pytest.mark.skipif(not os.environ.get(PG_ENV), reason=f"needs {PG_ENV}")
def test_same_values_on_both_backends(tmp_path: Path) -> None:
    rec = hostile_record()
    pg_url, drop = create_pg_database()
    snapshots = []
    try:
        for url in (f"sqlite:///{tmp_path / 'both.db'}", pg_url):
            upgrade(url)
            engine = make_engine(url)
            with make_session_factory(engine).begin() as s:
                repos.record_episodes(s, [rec])
            with make_session_factory(engine)() as s:
                snapshots.append(snapshot(s, rec.id))
            engine.dispose()
    finally:
        drop()
    assert snapshots[0] == snapshots[1] == expected_snapshot(rec)


def test_timestamps_are_utc_whatever_the_input_or_session_zone(migrated_url: str) -> None:
    kw: dict[str, Any] = {}
    if migrated_url.startswith("postgresql"):
        kw["connect_args"] = {"options": "-c TimeZone=Asia/Tokyo"}
    engine = make_engine(migrated_url, **kw)
    factory = make_session_factory(engine)
    tokyo = timezone(timedelta(hours=9))
    late = make_record(created_at=datetime(2026, 3, 1, 23, 30, tzinfo=UTC))  # 08:30 next day in Tokyo
    offset = make_record(created_at=datetime(2026, 3, 2, 8, 0, tzinfo=tokyo))  # 23:00 UTC on 03-01
    naive = make_record(created_at=datetime(2026, 3, 2, 0, 30))  # naive = UTC
    with factory.begin() as s:
        repos.record_episodes(s, [late, offset, naive])
    with factory() as s:
        got = {e.id: e.created_at for e in repos.list_episodes(s).items}
        days = [(c.key, c.total) for c in repos.episode_stats(s).by_day]
        window = repos.list_episodes(
            s, since=datetime(2026, 3, 1, 23, 15, tzinfo=UTC), until=datetime(2026, 3, 2, 9, 31, tzinfo=tokyo)
        )
    engine.dispose()
    assert got[late.id] == datetime(2026, 3, 1, 23, 30, tzinfo=UTC) and got[late.id].utcoffset() == timedelta(0)
    assert got[offset.id] == datetime(2026, 3, 1, 23, 0, tzinfo=UTC)
    assert got[naive.id] == datetime(2026, 3, 2, 0, 30, tzinfo=UTC)
    assert days == [("2026-03-01", 2), ("2026-03-02", 1)]
    assert [e.id for e in window.items] == [naive.id, late.id]  # 23:00 is before since; until = 00:31 UTC


def test_json_key_order_survives_storage(session: Session) -> None:
    # Training re-renders stored requests with the chat template; reordered keys would change prompts.
    tool = {
        "type": "function",
        "function": {
            "name": "f",
            "description": "d",
            "parameters": {
                "type": "object",
                "properties": {"zeta": {"type": "string"}, "alpha": {"type": "integer"}},
                "required": ["zeta"],
            },
        },
    }
    record = EpisodeRecord(status="failed", messages=[{"role": "user", "content": "hi"}], tools=[tool])
    repos.record_episodes(session, [record])
    session.commit()
    session.expire_all()
    stored = repos.get_episode(session, record.id)
    assert stored is not None
    assert stored.request_tools == [tool]
    params = stored.request_tools[0]["function"]["parameters"]
    assert list(params["properties"]) == ["zeta", "alpha"]
    assert list(stored.request_tools[0]["function"]) == ["name", "description", "parameters"]
