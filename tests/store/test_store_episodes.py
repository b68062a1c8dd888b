"""Episode repository: idempotent recording, reading, filtered cursor pages, feedback, stats."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from store import repos
from store.models import Attempt, Episode, EpisodeTool
from store.records import EpisodeRecord
from tests.store.helpers import T0, make_record


def count(session: Session, model: type) -> int:
    return int(session.execute(select(func.count()).select_from(model)).scalar_one())


def test_record_is_idempotent(session_factory: sessionmaker[Session]) -> None:
    rec = make_record(status="retry_ok", attempts=3, tools=("a", "b"))
    other = make_record(attempts=2)
    with session_factory.begin() as s:
        assert repos.record_episodes(s, [rec, rec]) == 1  # duplicate inside one batch too
    with session_factory.begin() as s:
        assert repos.record_episodes(s, [rec, other]) == 1
        assert repos.record_episodes(s, []) == 0
    with session_factory() as s:
        assert count(s, Episode) == 2
        assert count(s, Attempt) == 5
        assert count(s, EpisodeTool) == 3  # a, b for rec; get_weather for other


def test_record_rejects_invalid_status_before_writing(session_factory: sessionmaker[Session]) -> None:
    with session_factory.begin() as s, pytest.raises(ValueError, match="status"):
        repos.record_episodes(s, [make_record(), make_record(status="great")])
    with session_factory() as s:
        assert count(s, Episode) == 0


def test_get_episode_with_ordered_attempts(session_factory: sessionmaker[Session]) -> None:
    rec = make_record(status="retry_ok", attempts=3, task="weather", adapter="rrr-v1")
    rec.expected_calls = [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    with session_factory.begin() as s:
        repos.record_episodes(s, [rec])
    with session_factory() as s:
        ep = repos.get_episode(s, rec.id)
        assert ep is not None
        assert [a.kind for a in ep.attempts] == ["answer", "reflection", "retry"]
        assert [a.index for a in ep.attempts] == [0, 1, 2]
        assert ep.attempts[0].ok is True and ep.attempts[1].ok is None
        assert ep.attempts[2].tool_calls == rec.attempts[2].tool_calls
        assert ep.created_at == rec.created_at and ep.created_at.tzinfo is not None
        assert (ep.status, ep.served_status, ep.task, ep.adapter) == (
            "retry_ok",
            "retry_ok",
            "weather",
            "rrr-v1",
        )
        assert (ep.prompt_tokens, ep.completion_tokens) == (30, 15)
        assert ep.request_messages == rec.messages and ep.request_tools == rec.tools
        assert ep.expected_calls == rec.expected_calls and ep.verifier == {"kind": "schema"}
        assert repos.get_episode(s, "no-such-id") is None


def test_attempts_are_deleted_with_their_episode(session_factory: sessionmaker[Session]) -> None:
    rec = make_record(attempts=3)
    with session_factory.begin() as s:
        repos.record_episodes(s, [rec])
    with session_factory.begin() as s:
        s.execute(Episode.__table__.delete())  # type: ignore[attr-defined]
    with session_factory() as s:
        assert count(s, Attempt) == 0 and count(s, EpisodeTool) == 0


def seed(session_factory: sessionmaker[Session]) -> list[EpisodeRecord]:
    statuses = ["first_ok", "retry_ok", "failed", "upstream_error", "rejected"]
    records = []
    for i in range(47):
        records.append(
            make_record(
                status=statuses[i % 5],
                tools=("get_weather", "search") if i % 3 == 0 else ("book_flight",),
                called="search" if i % 3 == 0 and i % 2 else None,
                adapter=[None, "rrr-v1", "rrr-v2"][i % 3 if i % 4 else 0],
                task=["weather", "travel"][i % 2],
                # pairs of episodes share a timestamp so the id tie-break is exercised
                minutes=i // 2,
            )
        )
    with session_factory.begin() as s:
        repos.record_episodes(s, records)
    return records


def involved(rec: EpisodeRecord) -> set[str]:
    names = {t["function"]["name"] for t in rec.tools or []}
    names |= {c["function"]["name"] for a in rec.attempts for c in a.tool_calls or []}
    return names


def all_pages(session: Session, limit: int, **filters: object) -> list[str]:
    ids: list[str] = []
    cursor = None
    for _ in range(100):
        page = repos.list_episodes(session, limit=limit, cursor=cursor, **filters)  # type: ignore[arg-type]
        assert len(page.items) <= limit
        ids.extend(e.id for e in page.items)
        if page.next_cursor is None:
            return ids
        cursor = page.next_cursor
    raise AssertionError("pagination did not end")


FILTERS: list[dict[str, object]] = [
    {},
    {"status": "failed"},
    {"tool": "search"},
    {"tool": "book_flight"},
    {"adapter": "rrr-v2"},
    {"task": "travel"},
    {"since": T0 + timedelta(minutes=5)},
    {"until": T0 + timedelta(minutes=9)},
    {"since": T0 + timedelta(minutes=3), "until": T0 + timedelta(minutes=17), "task": "weather"},
    {"status": "first_ok", "tool": "get_weather", "adapter": "rrr-v1"},
    {"status": "failed", "task": "nope"},
]


@pytest.mark.parametrize("limit", [1, 7, 50])
def test_list_filters_and_cursor_pages(session_factory: sessionmaker[Session], limit: int) -> None:
    records = seed(session_factory)

    def matches(rec: EpisodeRecord, f: dict[str, object]) -> bool:
        return (
            ("status" not in f or rec.status == f["status"])
            and ("tool" not in f or f["tool"] in involved(rec))
            and ("adapter" not in f or rec.adapter == f["adapter"])
            and ("task" not in f or rec.task == f["task"])
            and ("since" not in f or rec.created_at >= f["since"])  # type: ignore[operator]
            and ("until" not in f or rec.created_at < f["until"])  # type: ignore[operator]
        )

    with session_factory() as s:
        for f in FILTERS:
            expected = [
                r.id for r in sorted(records, key=lambda r: (r.created_at, r.id), reverse=True) if matches(r, f)
            ]
            got = all_pages(s, limit, **f)
            assert got == expected, f
            assert len(set(got)) == len(got)
    assert any(len([r for r in records if matches(r, f)]) > 7 for f in FILTERS)


def test_pages_are_stable_while_new_episodes_arrive(session_factory: sessionmaker[Session]) -> None:
    records = seed(session_factory)
    seen: list[str] = []
    with session_factory() as s:
        page = repos.list_episodes(s, limit=10)
        seen.extend(e.id for e in page.items)
    with session_factory.begin() as s:  # newer episodes land between page requests
        repos.record_episodes(s, [make_record(minutes=1000 + i) for i in range(5)])
    cursor = page.next_cursor
    with session_factory() as s:
        while cursor:
            page = repos.list_episodes(s, limit=10, cursor=cursor)
            seen.extend(e.id for e in page.items)
            cursor = page.next_cursor
    assert seen == [r.id for r in sorted(records, key=lambda r: (r.created_at, r.id), reverse=True)]


def test_invalid_cursor(session: Session) -> None:
    for bad in ["garbage", "", "W10", repos.encode_cursor(T0, "x")[:-3]]:
        with pytest.raises(repos.InvalidCursor):
            repos.list_episodes(session, cursor=bad)


def counts(c: repos.StatusCounts) -> tuple[int, ...]:
    return (c.total, c.first_ok, c.retry_ok, c.failed, c.upstream_error, c.rejected)


def test_stats_by_adapter_and_day(session_factory: sessionmaker[Session]) -> None:
    day1, day2 = T0, T0 + timedelta(days=1)
    spec = [  # (adapter, day, status, how many)
        (None, day1, "first_ok", 3),
        (None, day1, "failed", 1),
        ("rrr-v1", day1, "first_ok", 2),
        ("rrr-v1", day1, "retry_ok", 2),
        ("rrr-v1", day2, "failed", 2),
        ("rrr-v1", day2, "upstream_error", 1),
        ("rrr-v1", day2, "rejected", 1),
        ("rrr-v2", day2, "retry_ok", 1),
    ]
    records = [
        make_record(adapter=a, status=st, created_at=d + timedelta(hours=11, minutes=59 - i))  # up to 23:59 UTC
        for a, d, st, n in spec
        for i in range(n)
    ]
    with session_factory.begin() as s:
        repos.record_episodes(s, records)
    with session_factory() as s:
        stats = repos.episode_stats(s)
    assert counts(stats.overall) == (13, 5, 3, 3, 1, 1)
    assert stats.overall.first_attempt_rate == pytest.approx(5 / 11)
    assert stats.overall.retry_rate == pytest.approx(3 / 6)
    assert stats.overall.success_rate == pytest.approx(8 / 11)
    by_adapter = {c.key: c for c in stats.by_adapter}
    assert [c.key for c in stats.by_adapter] == [None, "rrr-v1", "rrr-v2"]
    assert counts(by_adapter[None]) == (4, 3, 0, 1, 0, 0)
    assert counts(by_adapter["rrr-v1"]) == (8, 2, 2, 2, 1, 1)
    assert by_adapter["rrr-v1"].first_attempt_rate == pytest.approx(2 / 6)
    assert by_adapter["rrr-v1"].retry_rate == pytest.approx(2 / 4)
    assert counts(by_adapter["rrr-v2"]) == (1, 0, 1, 0, 0, 0)
    assert by_adapter["rrr-v2"].first_attempt_rate == 0.0 and by_adapter["rrr-v2"].retry_rate == 1.0
    assert by_adapter[None].retry_rate == 0.0
    assert [(c.key, *counts(c)) for c in stats.by_day] == [
        ("2026-03-01", 8, 5, 2, 1, 0, 0),
        ("2026-03-02", 5, 0, 1, 2, 1, 1),
    ]
    with session_factory() as s:
        window = repos.episode_stats(s, since=day2, until=day2 + timedelta(days=1))
        empty = repos.episode_stats(s, since=day2 + timedelta(days=5))
    assert counts(window.overall) == (5, 0, 1, 2, 1, 1)
    assert counts(empty.overall) == (0, 0, 0, 0, 0, 0)
    assert empty.overall.success_rate is None and empty.by_day == [] and empty.by_adapter == []
    assert window.to_dict()["overall"]["retry_rate"] == pytest.approx(1 / 3)


def test_feedback_flips_status_and_shows_in_list_and_stats(session_factory: sessionmaker[Session]) -> None:
    ok = make_record(status="first_ok", minutes=1)
    other = make_record(status="first_ok", minutes=2)
    broken = make_record(status="upstream_error", minutes=3)
    with session_factory.begin() as s:
        repos.record_episodes(s, [ok, other, broken])
    expected = [{"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]
    with session_factory.begin() as s:
        ep = repos.set_feedback(s, ok.id, ok=False, reason="wrong city", expected_calls=expected)
        assert ep is not None and ep.status == "failed"
        assert repos.set_feedback(s, "unknown", ok=False) is None
        up = repos.set_feedback(s, broken.id, ok=False)
        assert up is not None and up.status == "upstream_error" and up.feedback_ok is False
    with session_factory() as s:
        ep = repos.get_episode(s, ok.id)
        assert ep is not None
        assert (ep.status, ep.served_status, ep.trainable) == ("failed", "first_ok", True)
        assert (ep.feedback_ok, ep.feedback_reason) == (False, "wrong city")
        assert ep.feedback_expected_calls == expected and ep.expected_calls == expected
        assert ep.feedback_at is not None and ep.feedback_at.tzinfo is not None
        assert [e.id for e in repos.list_episodes(s, status="failed").items] == [ok.id]
        assert [e.id for e in repos.list_episodes(s, status="first_ok").items] == [other.id]
        stats = repos.episode_stats(s)
        assert counts(stats.overall) == (3, 1, 0, 1, 1, 0)
    with session_factory.begin() as s:  # positive feedback undoes the negative one; trainable stays
        ep = repos.set_feedback(s, ok.id, ok=True)
        assert ep is not None and (ep.status, ep.trainable, ep.feedback_ok) == ("first_ok", True, True)
    with session_factory() as s:
        assert counts(repos.episode_stats(s).overall) == (3, 2, 0, 0, 1, 0)


def test_mark_episodes_consumed(session_factory: sessionmaker[Session]) -> None:
    recs = [make_record(status="failed") for _ in range(3)]
    with session_factory.begin() as s:
        repos.record_episodes(s, recs)
        run = repos.create_training_run(s, config={})
    with session_factory.begin() as s:
        assert repos.mark_episodes_consumed(s, [recs[0].id, recs[2].id, "nope"], run.id) == 2
    with session_factory() as s:
        got = {e.id: e.consumed_by_run for e in repos.list_episodes(s).items}
    assert got == {recs[0].id: run.id, recs[1].id: None, recs[2].id: run.id}


def test_record_factory_fixture(record_factory: Callable[..., EpisodeRecord]) -> None:
    ids = {record_factory().id for _ in itertools.repeat(None, 3)}
    assert len(ids) == 3
