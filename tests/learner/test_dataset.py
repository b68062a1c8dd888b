"""learner/dataset.py: which stored episodes become GRPO rows, the client cap, the splits, and rendering."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from agent import prompts
from learner.dataset import FailureCandidate, build_failure_dataset, cap_client_share, failure_candidates
from learner.rows import FAILURE_ROW_COLUMNS, decode_row, read_rows, render_rows, write_rows
from store import repos
from store.records import EpisodeRecord
from tests.learner.conftest import WEATHER_TOOLS, call, episode


def store(factory: sessionmaker[Session], *records: EpisodeRecord) -> None:
    with factory.begin() as s:
        repos.record_episodes(s, records)


def build(factory: sessionmaker[Session], **kwargs: Any) -> Any:
    kwargs.setdefault("limit", 1000)
    kwargs.setdefault("max_client_share", 1.0)
    kwargs.setdefault("heldout_fraction", 0.0)
    with factory() as s:
        return build_failure_dataset(s, **kwargs)


def ids(rows: list[Any]) -> set[str]:
    return {r["episode_id"] for r in rows}


def test_only_failed_trainable_unconsumed_episodes_become_rows(session_factory: sessionmaker[Session]) -> None:
    store(
        session_factory,
        episode(status="failed", episode_id="failed"),
        episode(status="retry_ok", episode_id="retry-ok"),
        episode(status="failed", verifier="schema", expected=None, episode_id="schema-failed"),
        episode(status="first_ok", episode_id="first-ok"),
        episode(status="failed", trainable=False, episode_id="not-trainable"),
        episode(status="failed", expected=None, trainable=True, episode_id="reference-without-expected"),
        episode(status="upstream_error", trainable=True, episode_id="upstream"),
        episode(status="failed", episode_id="consumed-promoted"),
        episode(status="failed", episode_id="consumed-rejected"),
        episode(status="first_ok", verifier="schema", expected=None, episode_id="feedback-fail"),
        episode(status="first_ok", verifier="schema", expected=None, episode_id="feedback-expected"),
        episode(status="failed", episode_id="feedback-ok"),
        episode(status="retry_ok", episode_id="retry-ok-confirmed"),
    )
    with session_factory.begin() as s:
        for run_id, status in (("run-promoted", "promoted"), ("run-rejected", "rejected")):
            repos.create_training_run(s, run_id=run_id)
            repos.update_training_run(s, run_id, status=status)
        repos.mark_episodes_consumed(s, ["consumed-promoted"], "run-promoted")
        repos.mark_episodes_consumed(s, ["consumed-rejected"], "run-rejected")
        repos.set_feedback(s, "feedback-fail", ok=False, reason="wrong city")  # no expected calls: not trainable
        repos.set_feedback(
            s, "feedback-expected", ok=False, expected_calls=[{"name": "get_weather", "arguments": {"city": "Lyon"}}]
        )
        repos.set_feedback(s, "feedback-ok", ok=True)  # the client contradicts the stored verdict
        repos.set_feedback(s, "retry-ok-confirmed", ok=True)  # confirms the retry; the first attempt still failed

    data = build(session_factory)
    assert ids(data.train) == {
        "failed",
        "retry-ok",
        "schema-failed",
        "consumed-rejected",
        "feedback-expected",
        "retry-ok-confirmed",
    }
    assert sorted(data.episode_ids) == sorted(ids(data.train))
    assert ids(build(session_factory, exclude_consumed=False).train) == ids(data.train) | {"consumed-promoted"}
    with session_factory() as s:  # what the scheduler counts before deciding to train
        assert {c.id for c in failure_candidates(s)} == ids(data.train)

    rows = {r["episode_id"]: r for r in data.train}
    row = rows["failed"]
    assert set(row) == set(FAILURE_ROW_COLUMNS)
    task = [{"role": "user", "content": "What is the weather in Paris?"}]
    assert row["task_messages"] == task
    failed = prompts.failed_assistant_message(None, [call("Rome")])
    assert row["prompt_messages"] == prompts.reflection_messages(task, failed)
    assert row["prompt_messages"][-1]["content"] == prompts.REFLECTION_PROMPT
    assert row["tools"] == WEATHER_TOOLS and row["tool_choice"] is None
    assert row["verifier"] == {"type": "reference"}
    assert row["expected"] == [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    assert row["client_key_id"] == "key-a"
    # Failed only by feedback: judged by the stored spec AND the calls the feedback supplied.
    fb = rows["feedback-expected"]
    assert fb["verifier"] == {"type": "all", "of": [{"type": "schema"}, {"type": "reference"}]}
    assert fb["expected"] == [{"name": "get_weather", "arguments": {"city": "Lyon"}}]
    assert fb["prompt_messages"][1] == prompts.failed_assistant_message(None, [call("Paris")])
    # The regression set holds the one untouched first-attempt success, and nothing from the batch.
    assert ids(data.regression) == {"first-ok"}
    assert data.regression[0]["prompt_messages"] == []


def test_reflection_request_can_quote_the_verifier_reason(session_factory: sessionmaker[Session]) -> None:
    store(session_factory, episode(episode_id="e"))
    row = build(session_factory, with_reason=True).train[0]
    assert "<verifier>\ncity: expected 'Paris', got 'Rome'\n</verifier>" in row["prompt_messages"][-1]["content"]


def test_countdown_episodes_get_the_math_reflection_prompt(session_factory: sessionmaker[Session]) -> None:
    record = episode(verifier={"type": "countdown", "nums": [1, 2, 3], "target": 6}, expected=None, episode_id="m")
    record.tools = None
    store(session_factory, record)
    row = build(session_factory).train[0]
    assert row["prompt_messages"][-1]["content"] == prompts.MATH_REFLECTION_PROMPT
    assert row["tools"] is None


def test_one_client_cannot_fill_the_batch(session_factory: sessionmaker[Session]) -> None:
    records = [episode(client="big", minutes=i, episode_id=f"big-{i:02d}") for i in range(20)]
    for client in ("b", "c", "d"):
        records += [episode(client=client, minutes=i, episode_id=f"{client}-{i}") for i in range(3)]
    store(session_factory, *records)

    data = build(session_factory, max_client_share=0.25)
    share = Counter(r["client_key_id"] for r in data.train)
    assert sum(share.values()) == 12 and max(share.values()) <= 0.25 * 12
    assert {r["episode_id"] for r in data.train if r["client_key_id"] == "big"} == {"big-19", "big-18", "big-17"}
    assert len(build(session_factory, max_client_share=1.0).train) == 29
    limited = build(session_factory, max_client_share=0.5, limit=8)
    counts = Counter(r["client_key_id"] for r in limited.train)
    assert sum(counts.values()) == 8 and max(counts.values()) <= 4


def test_cap_client_share_edge_cases() -> None:
    one_client = [FailureCandidate(f"e{i}", "solo", i) for i in range(10)]
    assert cap_client_share(one_client, 100, 0.25) == []  # single tenant: set max_client_share=1.0
    assert len(cap_client_share(one_client, 100, 1.0)) == 10
    assert len(cap_client_share(one_client, 4, 1.0)) == 4
    keyless = [FailureCandidate(f"n{i}", None, i) for i in range(6)] + [
        FailureCandidate(f"k{i}", "k", i) for i in range(6)
    ]
    chosen = cap_client_share(keyless, 100, 0.5)
    assert Counter(c.client for c in chosen) == {None: 6, "k": 6}
    assert cap_client_share([], 10, 0.25) == []


def test_split_is_deterministic_disjoint_and_stable(session_factory: sessionmaker[Session]) -> None:
    store(session_factory, *[episode(client=f"k{i % 5}", minutes=i, episode_id=f"ep-{i:03d}") for i in range(60)])
    first = build(session_factory, heldout_fraction=0.25, seed=7)
    again = build(session_factory, heldout_fraction=0.25, seed=7)
    assert [r["episode_id"] for r in first.train] == [r["episode_id"] for r in again.train]
    assert [r["episode_id"] for r in first.heldout] == [r["episode_id"] for r in again.heldout]
    assert not ids(first.train) & ids(first.heldout)
    assert ids(first.train) | ids(first.heldout) == set(first.episode_ids) and len(first.episode_ids) == 60
    assert 5 <= len(first.heldout) <= 25
    assert ids(build(session_factory, heldout_fraction=0.25, seed=8).heldout) != ids(first.heldout)
    # New episodes do not move old ones between the splits.
    store(session_factory, *[episode(client=f"k{i % 5}", minutes=100 + i, episode_id=f"new-{i}") for i in range(10)])
    grown = build(session_factory, heldout_fraction=0.25, seed=7)
    assert ids(first.heldout) <= ids(grown.heldout) and ids(first.train) <= ids(grown.train)


def test_regression_set_is_past_successes_never_from_the_batch(session_factory: sessionmaker[Session]) -> None:
    store(
        session_factory,
        *[episode(status="first_ok", client=f"k{i % 4}", minutes=i, episode_id=f"ok-{i}") for i in range(8)],
        episode(status="first_ok", expected=None, episode_id="ok-not-rerunnable"),
        episode(status="first_ok", verifier="schema", expected=None, episode_id="ok-feedback-failed"),
        *[episode(status="failed", client=f"k{i % 4}", episode_id=f"fail-{i}") for i in range(8)],
    )
    with session_factory.begin() as s:
        repos.set_feedback(s, "ok-feedback-failed", ok=False)
    data = build(session_factory, heldout_fraction=0.5, max_client_share=0.25, regression_limit=4)
    assert ids(data.regression) <= {f"ok-{i}" for i in range(8)} and len(data.regression) == 4
    assert Counter(r["client_key_id"] for r in data.regression) == {"k0": 1, "k1": 1, "k2": 1, "k3": 1}
    assert not ids(data.regression) & set(data.episode_ids)
    assert all(r["prompt_messages"] == [] and r["verifier"] == {"type": "reference"} for r in data.regression)
    assert all(r["expected"] for r in data.regression)


def test_bad_arguments_say_what_to_change(session_factory: sessionmaker[Session]) -> None:
    with session_factory() as s:
        with pytest.raises(ValueError, match="max_client_share"):
            build_failure_dataset(s, limit=10, max_client_share=0)
        with pytest.raises(ValueError, match="heldout_fraction"):
            build_failure_dataset(s, limit=10, heldout_fraction=1.0)
        assert build_failure_dataset(s, limit=10).summary() == {"train": 0, "heldout": 0, "regression": 0}


def test_rows_render_byte_identically_to_the_local_engine(
    session_factory: sessionmaker[Session], tiny_model_dir: Path, tmp_path: Path
) -> None:
    from engines.local import LocalEngine

    history = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Weather in Oslo, then Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call("Oslo", call_id="x1")]},
        {"role": "tool", "tool_call_id": "x1", "content": '{"temp": 3}'},
        {"role": "user", "content": [{"type": "text", "text": "And Paris?"}]},
    ]
    store(session_factory, episode(episode_id="multi", messages=history), episode(episode_id="plain"))
    rows = build(session_factory).train
    engine = LocalEngine(str(tiny_model_dir), num_threads=1)
    rendered = render_rows(rows, engine.tokenizer)
    for row, out in zip(rows, rendered, strict=True):
        expected = engine.render_prompt(row["prompt_messages"], row["tools"])
        assert out["prompt"] == expected
        assert out["prompt"].endswith(prompts.REFLECTION_PROMPT + "<|im_end|>\n<|im_start|>assistant\n")
        # What TRL tokenizes (special tokens on) is what the engine sends to the model.
        assert engine.tokenizer(text=out["prompt"])["input_ids"] == engine.encode(expected)
        assert all(isinstance(out[c], str) for c in ("prompt_messages", "tools", "verifier", "expected"))
        assert decode_row(out) | {"prompt": row.get("prompt")} == dict(row) | {"prompt": row.get("prompt")}
    # Rows go to the training child as JSON lines and come back equal.
    path = write_rows(tmp_path / "w" / "train.jsonl", rows)
    assert read_rows(path) == json.loads(json.dumps(rows))
    with pytest.raises(ValueError, match="prompt_messages"):
        render_rows(build(session_factory).regression or [{**rows[0], "prompt_messages": []}], engine.tokenizer)
