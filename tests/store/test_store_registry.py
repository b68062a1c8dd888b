"""Adapter registry (activate, rollback, one active at a time), training runs, and leases."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import exc, update
from sqlalchemy.orm import Session, sessionmaker

from store import repos
from store.models import Adapter
from tests.store.helpers import T0


def add_adapters(session_factory: sessionmaker[Session], n: int) -> list[str]:
    names = []
    with session_factory.begin() as s:
        for _ in range(n):
            version = repos.next_adapter_version(s)
            name = f"rrr-v{version}"
            repos.create_adapter(s, name=name, version=version, path=f"adapters/{name}", base_model="tiny")
            names.append(name)
    return names


def active_name(session_factory: sessionmaker[Session]) -> str | None:
    with session_factory() as s:
        adapter = repos.get_active_adapter(s)
        return adapter.name if adapter else None


def test_versions_and_listing(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as s:
        assert repos.next_adapter_version(s) == 1
    names = add_adapters(session_factory, 3)
    assert names == ["rrr-v1", "rrr-v2", "rrr-v3"]
    with session_factory() as s:
        assert [a.name for a in repos.list_adapters(s)] == ["rrr-v3", "rrr-v2", "rrr-v1"]
        assert all(a.status == "candidate" for a in repos.list_adapters(s))
        assert repos.get_active_adapter(s) is None
        assert repos.next_adapter_version(s) == 4
    with session_factory.begin() as s, pytest.raises(exc.IntegrityError):
        repos.create_adapter(s, name="rrr-v1", version=9, path="x", base_model="tiny")
    with session_factory.begin() as s, pytest.raises(ValueError):
        repos.create_adapter(s, name="x", version=10, path="x", base_model="tiny", status="active")


def test_activate_and_rollback(session_factory: sessionmaker[Session]) -> None:
    v1, v2, v3 = add_adapters(session_factory, 3)
    for name in (v1, v2, v3):
        with session_factory.begin() as s:
            adapter = repos.activate_adapter(s, name)
            assert adapter.status == "active" and adapter.activated_at is not None
        assert active_name(session_factory) == name
        with session_factory() as s:
            assert len(repos.list_adapters(s, status="active")) == 1
    with session_factory.begin() as s:  # re-activating the active one is a no-op
        assert repos.activate_adapter(s, v3).name == v3
    with session_factory() as s:
        assert {a.name: a.status for a in repos.list_adapters(s)} == {
            v1: "retired",
            v2: "retired",
            v3: "active",
        }

    with session_factory.begin() as s:
        back = repos.rollback_adapter(s)
        assert back is not None and back.name == v2
    assert active_name(session_factory) == v2
    with session_factory.begin() as s:
        back = repos.rollback_adapter(s)
        assert back is not None and back.name == v1
    with session_factory.begin() as s:  # v1 replaced nothing: the base model serves
        assert repos.rollback_adapter(s) is None
    assert active_name(session_factory) is None
    with session_factory.begin() as s:  # nothing active: nothing to do
        assert repos.rollback_adapter(s) is None
    with session_factory() as s:
        assert {a.status for a in repos.list_adapters(s)} == {"retired"}


def test_rollback_skips_rejected(session_factory: sessionmaker[Session]) -> None:
    v1, v2, v3 = add_adapters(session_factory, 3)
    for name in (v1, v2, v3):
        with session_factory.begin() as s:
            repos.activate_adapter(s, name)
    with session_factory.begin() as s:
        repos.set_adapter_status(s, v2, "rejected", metrics={"why": "regressed"})
    with session_factory() as s:  # the plan, read without changing anything
        current, target = repos.rollback_target(s)
        assert current is not None and current.name == v3 and target is not None and target.name == v1
    assert active_name(session_factory) == v3
    with session_factory.begin() as s:
        back = repos.rollback_adapter(s)
        assert back is not None and back.name == v1
    with session_factory() as s:  # v1 replaced nothing: a rollback would leave the base model
        current, target = repos.rollback_target(s)
        assert current is not None and current.name == v1 and target is None
    with session_factory.begin() as s:
        repos.rollback_adapter(s)
    with session_factory() as s:
        assert repos.rollback_target(s) == (None, None)


def test_activate_unknown(session_factory: sessionmaker[Session]) -> None:
    with session_factory.begin() as s, pytest.raises(repos.AdapterNotFound):
        repos.activate_adapter(s, "rrr-v404")


def test_database_refuses_two_active_adapters(session_factory: sessionmaker[Session]) -> None:
    v1, v2 = add_adapters(session_factory, 2)
    with session_factory.begin() as s:
        repos.activate_adapter(s, v1)
    with session_factory.begin() as s, pytest.raises(exc.IntegrityError):
        s.execute(update(Adapter).where(Adapter.name == v2).values(status="active"))
    assert active_name(session_factory) == v1


def test_training_run_lifecycle(session_factory: sessionmaker[Session]) -> None:
    with session_factory.begin() as s:
        run = repos.create_training_run(s, config={"lr": 5e-6, "group": 8}, dataset_size=64)
        older = repos.create_training_run(s, config={})
        older.created_at = run.created_at - timedelta(minutes=1)
    with session_factory.begin() as s:
        got = repos.get_training_run(s, run.id)
        assert got is not None and got.status == "queued" and got.metrics == []
        repos.update_training_run(s, run.id, status="running", now=T0)
        repos.append_run_metrics(s, run.id, {"step": 1, "loss": 0.5})
        repos.append_run_metrics(s, run.id, {"step": 2, "loss": 0.25})
        repos.heartbeat_run(s, run.id, now=T0 + timedelta(seconds=30))
        repos.set_gate_result(s, run.id, {"promote": True, "first": [0.4, 0.5]})
        repos.update_training_run(s, run.id, status="succeeded", adapter_name="rrr-v1", now=T0 + timedelta(minutes=1))
        repos.update_training_run(s, run.id, status="promoted", now=T0 + timedelta(minutes=2))
        repos.update_training_run(s, older.id, status="failed", error="OOM")
    with session_factory() as s:
        got = repos.get_training_run(s, run.id)
        assert got is not None
        assert got.status == "promoted" and got.adapter_name == "rrr-v1" and got.dataset_size == 64
        assert got.config == {"lr": 5e-6, "group": 8}
        assert got.metrics == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]
        assert got.gate_result == {"promote": True, "first": [0.4, 0.5]}
        assert (got.started_at, got.heartbeat_at, got.finished_at) == (
            T0,
            T0 + timedelta(seconds=30),
            T0 + timedelta(minutes=1),
        )
        assert [r.id for r in repos.list_training_runs(s)] == [run.id, older.id]
        assert [r.id for r in repos.list_training_runs(s, status="failed")] == [older.id]
        assert repos.get_training_run(s, older.id).error == "OOM"  # type: ignore[union-attr]
    with session_factory.begin() as s:
        with pytest.raises(ValueError):
            repos.update_training_run(s, run.id, status="exploded")
        with pytest.raises(repos.RunNotFound):
            repos.heartbeat_run(s, "nope")


def lease(session_factory: sessionmaker[Session], fn: str, *args: object, **kw: object) -> bool:
    with session_factory.begin() as s:
        return bool(getattr(repos, fn)(s, *args, **kw))


def test_lease_is_exclusive_until_expiry(session_factory: sessionmaker[Session]) -> None:
    at = T0
    assert lease(session_factory, "acquire_lease", "learner", "a", 60, now=at)
    assert not lease(session_factory, "acquire_lease", "learner", "b", 60, now=at + timedelta(seconds=59))
    assert lease(session_factory, "acquire_lease", "other-lease", "b", 60, now=at)  # names are independent
    assert lease(session_factory, "acquire_lease", "learner", "a", 60, now=at + timedelta(seconds=30))  # ours
    with session_factory() as s:
        row = repos.get_lease(s, "learner")
        assert row is not None and row.holder == "a"
        assert row.acquired_at == at and row.expires_at == at + timedelta(seconds=90)
    assert not lease(session_factory, "acquire_lease", "learner", "b", 60, now=at + timedelta(seconds=89))
    assert lease(session_factory, "acquire_lease", "learner", "b", 60, now=at + timedelta(seconds=90))  # expired
    with session_factory() as s:
        row = repos.get_lease(s, "learner")
        assert row is not None and row.holder == "b" and row.acquired_at == at + timedelta(seconds=90)


def test_lease_renew_and_release(session_factory: sessionmaker[Session]) -> None:
    at = T0
    assert not lease(session_factory, "renew_lease", "learner", "a", 60, now=at)  # nothing to renew
    assert lease(session_factory, "acquire_lease", "learner", "a", 10, now=at)
    assert not lease(session_factory, "renew_lease", "learner", "b", 60, now=at)  # not b's
    assert lease(session_factory, "renew_lease", "learner", "a", 60, now=at + timedelta(seconds=5))
    assert not lease(session_factory, "acquire_lease", "learner", "b", 60, now=at + timedelta(seconds=30))
    assert not lease(session_factory, "renew_lease", "learner", "a", 60, now=at + timedelta(seconds=65))  # lapsed
    assert not lease(session_factory, "release_lease", "learner", "b")
    assert lease(session_factory, "release_lease", "learner", "a")
    assert not lease(session_factory, "release_lease", "learner", "a")
    assert lease(session_factory, "acquire_lease", "learner", "b", 60, now=at + timedelta(seconds=1))
    with session_factory() as s:
        row = repos.get_lease(s, "learner")
        assert row is not None and row.holder == "b"


def test_a_holder_without_heartbeats_loses_the_lease_long_before_its_expiry(
    session_factory: sessionmaker[Session],
) -> None:
    at = T0
    assert lease(session_factory, "acquire_lease", "learner", "a", 300, now=at)
    # a beats every 10 s: with stale_after_s=30 nobody can take it, however long it holds it.
    for beat in (10, 20, 30, 40):
        assert lease(session_factory, "renew_lease", "learner", "a", 300, now=at + timedelta(seconds=beat))
        later = at + timedelta(seconds=beat + 29)
        assert not lease(session_factory, "acquire_lease", "learner", "b", 300, stale_after_s=30, now=later)
    with session_factory() as s:
        row = repos.get_lease(s, "learner")
        assert row is not None and row.heartbeat_at == at + timedelta(seconds=40)
    # a falls silent at 40 s: 30 s later b takes it, 230 s before the expiry a's last renewal set.
    assert not lease(session_factory, "acquire_lease", "learner", "b", 300, now=at + timedelta(seconds=71))
    silent = at + timedelta(seconds=71)
    assert lease(session_factory, "acquire_lease", "learner", "b", 300, stale_after_s=30, now=silent)
    # ...and a, if it was only slow, finds out at its next heartbeat: the renewal fails.
    assert not lease(session_factory, "renew_lease", "learner", "a", 300, now=at + timedelta(seconds=72))
    with session_factory() as s:
        row = repos.get_lease(s, "learner")
        assert row is not None and row.holder == "b" and row.heartbeat_at == at + timedelta(seconds=71)


def test_lease_real_clock_short_ttl(session_factory: sessionmaker[Session]) -> None:
    import time

    assert lease(session_factory, "acquire_lease", "sched", "a", 0.3)
    assert not lease(session_factory, "acquire_lease", "sched", "b", 0.3)
    time.sleep(0.35)
    assert lease(session_factory, "acquire_lease", "sched", "b", 0.3)


def test_lease_race_has_one_winner(session_factory: sessionmaker[Session]) -> None:
    import threading

    barrier = threading.Barrier(6)
    winners: list[str] = []
    errors: list[BaseException] = []

    def contend(holder: str) -> None:
        try:
            barrier.wait()
            if lease(session_factory, "acquire_lease", "race", holder, 60, now=T0):
                winners.append(holder)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=contend, args=(f"h{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(winners) == 1
    with session_factory() as s:
        row = repos.get_lease(s, "race")
        assert row is not None and row.holder == winners[0]
