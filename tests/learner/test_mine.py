"""learner/mine.py and `rrr learn mine`: rejection sampling against the scripted upstream over real HTTP.

The upstream answers each query by a rule (always right, always wrong, right then wrong), so how many
failures and successes must be stored is known exactly; the stored episodes are checked against it.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from cli import app
from engines.pool import EnginePool
from engines.vllm import VLLMEngine
from learner.mine import MineConfig, mine_dataset
from store import repos
from store.db import make_engine, make_session_factory, upgrade
from store.models import Episode
from tests.support.upstream import Script, ScriptedUpstream, text, tool_call
from tools.formats import load_dataset

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
CITIES = {"Rome": "always right", "Oslo": "always wrong", "Lima": "right, then wrong", "Nice": "always right"}


def write_dataset(path: Path) -> Path:
    with path.open("w") as fh:
        for city in CITIES:
            fh.write(
                json.dumps(
                    {
                        "id": city,
                        "messages": [{"role": "user", "content": f"Weather in {city}?"}],
                        "tools": TOOLS,
                        "expected_tool_calls": [{"name": "get_weather", "arguments": {"city": city}}],
                    }
                )
                + "\n"
            )
        fh.write(
            json.dumps(
                {
                    "id": "count",
                    "messages": [{"role": "user", "content": "Make 7 from 3 and 4."}],
                    "tools": TOOLS,
                    "expected_tool_calls": [],
                }
            )
            + "\n"
        )  # irrelevance: no call is right
    return path


class Responder:
    """Answers by the rule of each city; records every request body."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.seen: Counter[str] = Counter()
        self._lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> Any:
        question = body["messages"][-1]["content"]
        with self._lock:
            self.bodies.append(body)
            city = next((c for c in CITIES if c in question), None)
            if city is None:
                return text("Seven.")
            self.seen[city] += 1
            n = self.seen[city]
        rule = CITIES[city]
        right = rule == "always right" or (rule == "right, then wrong" and n == 1)
        return tool_call("get_weather", {"city": city if right else "Paris"})


@pytest.fixture
def session_factory(tmp_path: Path) -> Iterator[tuple[str, Callable[[], Session]]]:
    url = f"sqlite:///{tmp_path / 'rrr.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield url, make_session_factory(engine)
    engine.dispose()


def stored(sessions: Callable[[], Session]) -> dict[str, Episode]:
    with sessions() as s:
        episodes = list(s.query(Episode))
        return {e.request_messages[0]["content"].split()[-1].rstrip("?"): e for e in episodes}  # type: ignore[index]


def check_store(sessions: Callable[[], Session]) -> None:
    episodes = stored(sessions)
    assert {k: e.status for k, e in episodes.items()} == {
        "Rome": "first_ok",
        "Nice": "first_ok",
        "Oslo": "failed",
        "Lima": "failed",
        "4.": "first_ok",
    }
    for name in ("Oslo", "Lima"):
        e = episodes[name]
        assert e.trainable and e.task == "mined" and e.verifier == {"type": "reference"}
        assert e.expected_calls == [{"get_weather": {"city": [name]}}]
        with sessions() as s:
            full = repos.get_episode(s, e.id)
            assert full is not None and [(a.kind, a.ok) for a in full.attempts] == [("answer", False)]
    assert not episodes["Rome"].trainable and episodes["4."].expected_calls == []


def test_failures_and_successes_are_stored_as_the_verifier_said(
    tmp_path: Path, session_factory: tuple[str, Callable[[], Session]]
) -> None:
    _, sessions = session_factory
    items = load_dataset(f"openai:{write_dataset(tmp_path / 'ds.jsonl')}")
    responder = Responder()
    progress: list[int] = []
    with ScriptedUpstream(Script(responder=responder)) as up:
        engine = EnginePool([VLLMEngine(up.url)])
        summary = asyncio.run(
            mine_dataset(
                items,
                engine,
                sessions,
                MineConfig(samples=3, temperature=0.9, seed=7),
                on_item=lambda s: progress.append(s.queries_all_ok),
            )
        )
    assert summary.to_dict() == {
        "queries": 5,
        "samples": 3 + 3 + 1 + 2 + 3,
        "failures_stored": 2,
        "successes_stored": 3,
        "queries_with_failure": 2,
        "queries_all_ok": 3,
        "engine_errors": 0,
    }
    assert len(progress) == 5
    assert responder.seen == {"Rome": 3, "Nice": 3, "Oslo": 1, "Lima": 2}  # sampling stops at the first failure
    assert all(b["temperature"] == 0.9 and "seed" in b for b in responder.bodies)
    assert len({b["seed"] for b in responder.bodies}) == len(responder.bodies)
    check_store(sessions)


def test_engine_errors_are_counted_never_stored_as_model_failures(
    tmp_path: Path, session_factory: tuple[str, Callable[[], Session]]
) -> None:
    _, sessions = session_factory
    items = load_dataset(f"openai:{write_dataset(tmp_path / 'ds.jsonl')}")
    with ScriptedUpstream(Script(answer=["error:500"])) as up:
        summary = asyncio.run(mine_dataset(items, VLLMEngine(up.url), sessions, MineConfig(samples=2)))
    assert summary.engine_errors == 10 and summary.failures_stored == summary.successes_stored == 0
    with sessions() as s:
        assert s.query(Episode).count() == 0
    with pytest.raises(ValueError, match="temperature above 0"):
        asyncio.run(mine_dataset(items, VLLMEngine(up.url), sessions, MineConfig(temperature=0)))


def test_rrr_learn_mine_cli_prints_the_summary_as_json(
    tmp_path: Path, session_factory: tuple[str, Callable[[], Session]]
) -> None:
    url, sessions = session_factory
    dataset = write_dataset(tmp_path / "ds.jsonl")
    with ScriptedUpstream(Script(responder=Responder())) as up:
        result = CliRunner().invoke(
            app,
            [
                "learn",
                "mine",
                "--dataset",
                f"openai:{dataset}",
                "--samples",
                "3",
                "--engine-url",
                up.url,
                "--database-url",
                url,
                "--json",
            ],
        )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert (summary["failures_stored"], summary["successes_stored"]) == (2, 3)
    check_store(sessions)
    bad = CliRunner().invoke(
        app, ["learn", "mine", "--dataset", "nope:x", "--engine-url", up.url, "--database-url", url]
    )
    assert bad.exit_code == 1 and "unknown dataset format" in bad.output
