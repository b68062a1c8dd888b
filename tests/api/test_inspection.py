"""Inspection and admin routes on a seeded store (SQLite, and PostgreSQL when configured): filters and
cursor pagination return exactly the right rows, feedback flips episodes, adapters flip atomically."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from adapters.folder import write_adapter_folder
from store.episodes import record_episodes
from store.records import EpisodeRecord
from store.registry import create_adapter
from store.runs import create_training_run, update_training_run
from tests.api.conftest import ADMIN, INFER, OTHER, Rrr, running
from tests.store.helpers import T0, make_record

SEED: list[dict[str, Any]] = [
    dict(status="first_ok", tools=("get_weather",), adapter=None, task="weather"),
    dict(status="retry_ok", tools=("get_weather", "search"), called="search", adapter="rrr-v1", task="weather"),
    dict(status="failed", tools=("search",), adapter="rrr-v1", task="web"),
    dict(status="failed", tools=("get_weather",), adapter=None, task=None),
    dict(status="upstream_error", tools=("search",), adapter="rrr-v2", task="web"),
    dict(status="first_ok", tools=("book_flight",), adapter="rrr-v2", task="travel"),
    dict(status="failed", tools=("book_flight", "search"), adapter="rrr-v2", task="travel"),
    dict(status="retry_ok", tools=("get_weather",), adapter=None, task="weather"),
    dict(status="first_ok", tools=("search",), adapter="rrr-v1", task="web"),
    dict(status="rejected", tools=("get_weather",), adapter=None, task=None),
    dict(status="failed", tools=("get_weather",), adapter="rrr-v1", task="weather"),
    dict(status="first_ok", tools=("search",), adapter=None, task="web"),
]


def _seed(rrr: Rrr) -> list[EpisodeRecord]:
    records = []
    for i, spec in enumerate(SEED):
        attempts = 3 if spec["status"] in ("retry_ok", "failed") else 1
        records.append(make_record(attempts=attempts, minutes=i, **spec))
    records.append(make_record(status="first_ok", minutes=5, episode_id="00000000-0000-0000-0000-000000000000"))
    with rrr.state.session_factory.begin() as session:
        record_episodes(session, records)
    return records


def _newest_first(records: list[EpisodeRecord]) -> list[str]:
    return [r.id for r in sorted(records, key=lambda r: (r.created_at, r.id), reverse=True)]


def _names(record: EpisodeRecord) -> set[str]:
    return {t["function"]["name"] for t in record.tools or []}


def _get(rrr: Rrr, path: str, **params: Any) -> dict[str, Any]:
    response = rrr.http(ADMIN).get(path, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def _walk(rrr: Rrr, limit: int, **filters: Any) -> list[str]:
    ids: list[str] = []
    cursor = None
    for _ in range(100):
        page = _get(rrr, "/v1/episodes", limit=limit, **filters, **({"cursor": cursor} if cursor else {}))
        assert page["object"] == "list" and len(page["data"]) <= limit
        ids += [e["id"] for e in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return ids
    raise AssertionError("pagination did not end")


FILTERS: list[tuple[dict[str, Any], Any]] = [
    ({}, lambda r: True),
    ({"status": "failed"}, lambda r: r.status == "failed"),
    ({"status": "rejected"}, lambda r: r.status == "rejected"),
    ({"tool": "search"}, lambda r: "search" in _names(r)),
    ({"tool": "book_flight", "status": "failed"}, lambda r: "book_flight" in _names(r) and r.status == "failed"),
    ({"adapter": "rrr-v1"}, lambda r: r.adapter == "rrr-v1"),
    ({"task": "web"}, lambda r: r.task == "web"),
    ({"task": "weather", "adapter": "rrr-v1"}, lambda r: r.task == "weather" and r.adapter == "rrr-v1"),
    (
        {"since": (T0 + timedelta(minutes=3)).isoformat(), "until": (T0 + timedelta(minutes=8)).isoformat()},
        lambda r: T0 + timedelta(minutes=3) <= r.created_at < T0 + timedelta(minutes=8),
    ),
    ({"since": "2026-03-01T12:10:00"}, lambda r: r.created_at >= T0 + timedelta(minutes=10)),  # no offset: UTC
    ({"tool": "no-such-tool"}, lambda r: False),
]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory, module_db_url: str) -> Iterator[tuple[Rrr, list[EpisodeRecord]]]:
    with running(tmp_path_factory.mktemp("seeded"), database_url=module_db_url) as rrr:
        yield rrr, _seed(rrr)


@pytest.mark.parametrize(("filters", "keep"), FILTERS, ids=[str(f) for f, _ in FILTERS])
def test_filters_and_cursor_pages_return_exactly_the_right_rows(
    seeded: tuple[Rrr, list[EpisodeRecord]], filters: dict[str, Any], keep: Any
) -> None:
    rrr, records = seeded
    expected = _newest_first([r for r in records if keep(r)])
    assert expected or filters == {"tool": "no-such-tool"}
    page = _get(rrr, "/v1/episodes", **filters)
    assert [e["id"] for e in page["data"]] == expected
    for limit in (1, 3, 5):
        walked = _walk(rrr, limit, **filters)
        assert walked == expected, limit


def test_episode_detail_and_bad_queries(db_rrr: Rrr) -> None:
    records = _seed(db_rrr)
    failed = next(r for r in records if r.status == "failed")
    detail = _get(db_rrr, f"/v1/episodes/{failed.id}")
    assert [a["kind"] for a in detail["attempts"]] == ["answer", "reflection", "retry"]
    assert detail["reflections"] == ["thinking"]
    assert [v["ok"] for v in detail["verdicts"]] == [False, False]
    admin = db_rrr.http(ADMIN)
    assert admin.get("/v1/episodes/no-such-episode").status_code == 404
    assert admin.get("/v1/episodes/" + "x" * 300).status_code == 404
    for params, param in (
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"status": "great"}, "status"),
        ({"limit": 0}, "limit"),
        ({"limit": 5000}, "limit"),
        ({"since": "yesterday"}, "since"),
    ):
        response = admin.get("/v1/episodes", params=params)
        assert response.status_code == 400, params
        assert response.json()["error"]["param"] == param


def test_stats_count_by_status_and_adapter(db_rrr: Rrr) -> None:
    records = _seed(db_rrr)
    stats = _get(db_rrr, "/v1/stats")
    overall = stats["overall"]
    assert overall["total"] == len(records)
    for status in ("first_ok", "retry_ok", "failed", "upstream_error", "rejected"):
        assert overall[status] == sum(r.status == status for r in records), status
    by_adapter = {row["key"]: row for row in stats["by_adapter"]}
    assert by_adapter["rrr-v1"]["total"] == sum(r.adapter == "rrr-v1" for r in records)
    assert stats["writer"]["dropped"] == 0
    window = _get(db_rrr, "/v1/stats", since=(T0 + timedelta(minutes=6)).isoformat())
    assert window["overall"]["total"] == sum(r.created_at >= T0 + timedelta(minutes=6) for r in records)


def test_feedback_flips_an_episode_and_shows_in_list_and_stats(db_rrr: Rrr) -> None:
    db_rrr.reset(db_rrr.upstream.script)
    response = db_rrr.chat()
    episode_id = response.json()["rrr"]["episode_id"]
    # sent at once, before the writer has necessarily stored the episode
    user = db_rrr.http(INFER)
    assert (
        user.post(f"/v1/episodes/{episode_id}/feedback", json={"ok": False, "reason": "wrong city"}).status_code == 200
    )
    failed = _get(db_rrr, "/v1/episodes", status="failed")["data"]
    assert [e["id"] for e in failed] == [episode_id]
    assert failed[0]["served_status"] == "first_ok" and failed[0]["feedback"]["reason"] == "wrong city"
    stats = _get(db_rrr, "/v1/stats")["overall"]
    assert (stats["first_ok"], stats["failed"]) == (0, 1)

    # someone else's key cannot judge it; bad bodies are 400; unknown ids 404
    other = db_rrr.http(OTHER)
    assert other.post(f"/v1/episodes/{episode_id}/feedback", json={"ok": True}).status_code == 404
    assert user.post(f"/v1/episodes/{episode_id}/feedback", json={"ok": "maybe"}).status_code == 400
    assert user.post(f"/v1/episodes/{episode_id}/feedback", json={"ok": True, "extra": 1}).status_code == 400
    assert (
        user.post(f"/v1/episodes/{episode_id}/feedback", json={"ok": False, "expected_tool_calls": "Paris"}).status_code
        == 400
    )
    assert user.post("/v1/episodes/4d6f0a3e-0000-0000-0000-000000000000/feedback", json={"ok": True}).status_code == 404

    expected = [{"name": "get_weather", "arguments": {"city": "Lyon"}}]
    body = user.post(f"/v1/episodes/{episode_id}/feedback", json={"ok": True, "expected_tool_calls": expected}).json()
    assert body["status"] == "first_ok" and body["trainable"] is True
    assert _get(db_rrr, f"/v1/episodes/{episode_id}")["expected_tool_calls"] == expected
    assert _get(db_rrr, "/v1/stats")["overall"]["first_ok"] == 1
    # an admin may judge any episode
    assert db_rrr.http(ADMIN).post(f"/v1/episodes/{episode_id}/feedback", json={"ok": False}).status_code == 200


def _fake_trained_adapter(tmp: Path) -> Path:
    source = tmp / "trained"
    source.mkdir(exist_ok=True)
    (source / "adapter_config.json").write_text('{"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]}')
    (source / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    return source


def _register(rrr: Rrr, *names: str, status: str = "candidate") -> dict[str, Path]:
    """Publish folders as the learner does (``adapters.folder.write_adapter_folder``), register them: name -> folder."""
    root = rrr.settings.resolved_adapters_root()
    source = _fake_trained_adapter(rrr.settings.data_dir)
    folders = {}
    with rrr.state.session_factory.begin() as session:
        for name in names:
            version = int(name.rsplit("v", 1)[1])
            folder, manifest_sha = write_adapter_folder(source, root, version, base_model="base")
            create_adapter(
                session,
                name=name,
                version=version,
                path=str(folder),
                base_model="base",
                status=status,
                manifest_sha256=manifest_sha,
            )
            folders[name] = folder
    return folders


def test_adapters_activate_and_roll_back_atomically(db_rrr: Rrr) -> None:
    rrr = db_rrr
    folders = _register(rrr, "rrr-v1", "rrr-v2")
    _register(rrr, "rrr-v3", status="rejected")
    admin = rrr.http(ADMIN)
    listed = admin.get("/v1/adapters").json()
    assert [a["name"] for a in listed["data"]] == ["rrr-v3", "rrr-v2", "rrr-v1"]
    assert str(folders["rrr-v1"].parent) not in str(listed) and "path" not in listed["data"][0]

    def served_model() -> str:
        rrr.reset(rrr.upstream.script)
        response = rrr.chat()
        assert response.status_code == 200
        return str(rrr.upstream.requests[-1]["model"])

    assert served_model() == "base"
    activated = admin.post("/v1/adapters/rrr-v1/activate")
    assert activated.status_code == 200, activated.text
    assert activated.json()["status"] == "active"
    assert rrr.upstream.adapters == {"rrr-v1": str(folders["rrr-v1"])}  # loaded before the flip
    assert served_model() == "rrr-v1"
    cards = {m.id: m for m in rrr.client().models.list().data}
    assert cards["rrr"].model_extra["rrr"]["alias_of"] == "rrr-v1" and "rrr-v2" in cards

    rrr.upstream.fail_loads = True  # R19: a failed load changes nothing
    refused = admin.post("/v1/adapters/rrr-v2/activate")
    assert refused.status_code == 409 and str(folders["rrr-v2"]) not in refused.text
    assert served_model() == "rrr-v1"
    assert _get(rrr, "/v1/adapters", status="active")["data"][0]["name"] == "rrr-v1"
    rrr.upstream.fail_loads = False

    assert admin.post("/v1/adapters/rrr-v2/activate").status_code == 200
    assert served_model() == "rrr-v2"
    rolled = admin.post("/v1/adapters/rollback").json()
    assert rolled["retired"] == "rrr-v2" and rolled["serving"] == "rrr-v1"
    assert served_model() == "rrr-v1"
    rolled = admin.post("/v1/adapters/rollback").json()
    assert rolled["active"] is None and rolled["serving"] == "base"
    assert served_model() == "base"
    assert admin.post("/v1/adapters/rollback").status_code == 409
    assert admin.post("/v1/adapters/rrr-v3/activate").status_code == 409
    assert admin.post("/v1/adapters/rrr-v9/activate").status_code == 404
    # pinning an adapter by name serves it whatever is active
    rrr.reset(rrr.upstream.script)
    assert rrr.chat(model="rrr-v2").json()["model"] == "rrr-v2"
    assert rrr.upstream.requests[-1]["model"] == "rrr-v2"
    rrr.flush()
    adapters = [e["adapter"] for e in _get(rrr, "/v1/episodes")["data"]]
    assert adapters[0] == "rrr-v2" and adapters.count("rrr-v1") == 3 and None in adapters


def test_training_runs_the_learner_stored_are_listed_and_read(db_rrr: Rrr) -> None:
    admin = db_rrr.http(ADMIN)
    with db_rrr.state.session_factory() as session, session.begin():
        first = create_training_run(session, config={}).id
        second = create_training_run(session, config={"learning_rate": 5e-6, "group_size": 4}).id
    listed = _get(db_rrr, "/v1/training-runs")["data"]
    assert [r["id"] for r in listed] == [second, first]
    assert listed[0]["config"] == {"learning_rate": 5e-6, "group_size": 4}
    assert _get(db_rrr, f"/v1/training-runs/{first}")["status"] == "queued"
    assert admin.get("/v1/training-runs/nope").status_code == 404
    assert admin.post("/v1/training-runs", json={}).status_code == 405  # runs are the learner's to create
    assert admin.get("/v1/training-runs", params={"status": "sleeping"}).status_code == 400
    assert _get(db_rrr, "/v1/training-runs", status="running")["data"] == []
    # A run that continues an interrupted one says so, and where it resumed.
    with db_rrr.state.session_factory() as session, session.begin():
        update_training_run(session, first, status="interrupted", error="interrupted during stage train: stopped")
        third = create_training_run(session, config={}).id
        update_training_run(session, third, resumed_from=first, resumed_from_step=10, warm_start_from="rrr-v1")
    assert _get(db_rrr, f"/v1/training-runs/{first}")["status"] == "interrupted"
    assert [r["id"] for r in _get(db_rrr, "/v1/training-runs", status="interrupted")["data"]] == [first]
    shown = _get(db_rrr, f"/v1/training-runs/{third}")
    assert (shown["resumed_from"], shown["resumed_from_step"], shown["warm_start_from"]) == (first, 10, "rrr-v1")


@pytest.mark.parametrize("tamper", ["weights", "extra_pickle", "manifest", "symlink", "outside_root", "dotdot"])
def test_unsafe_adapter_folders_are_refused_before_any_load(db_rrr: Rrr, tamper: str, tmp_path: Path) -> None:
    """R16: only untampered published folders under the adapters root reach an engine."""
    rrr = db_rrr
    folder = _register(rrr, "rrr-v1")["rrr-v1"]
    if tamper == "weights":
        (folder / "adapter_model.safetensors").write_bytes(b"evil")
    elif tamper == "extra_pickle":
        (folder / "extra.bin").write_bytes(b"pickle")
    elif tamper == "manifest":
        (folder / "manifest.json").write_text((folder / "manifest.json").read_text().replace("rrr-v1", "rrr-v01"))
    else:
        outside = tmp_path / "elsewhere" / "rrr-v7"
        outside.mkdir(parents=True)
        target = {
            "symlink": folder.parent / "rrr-v7",
            "outside_root": outside,
            "dotdot": folder.parent / ".." / "elsewhere" / "rrr-v7",
        }[tamper]
        if tamper == "symlink":
            target.symlink_to(outside, target_is_directory=True)
        with rrr.state.session_factory.begin() as session:
            create_adapter(session, name="rrr-v7", version=7, path=str(target), base_model="base")
    name = "rrr-v1" if tamper in ("weights", "extra_pickle", "manifest") else "rrr-v7"
    refused = rrr.http(ADMIN).post(f"/v1/adapters/{name}/activate")
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "adapter_unsafe"
    assert str(tmp_path) not in refused.text and str(folder.parent) not in refused.text
    assert rrr.upstream.admin_calls == []
    assert _get(rrr, "/v1/adapters", status="active")["data"] == []
