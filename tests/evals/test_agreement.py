"""Mining, the gate and `rrr eval` judge every answer alike, on every dataset format.

For each item of the fixture datasets (xLAM, BFCL with its irrelevance and live_relevance items,
OpenAI JSONL, countdown) and each of a handful of answers (the reference calls, a wrong call, no
call, a countdown answer), three verdicts are taken through each path's real code:

* eval: the score `rrr eval run` gives the attempt (`evals.items.score_answer`);
* mine: the status `rrr learn mine` stores for the episode (`learner.mine.mine_dataset`, one sample);
* gate: the first-attempt status the gate measures when it re-runs that stored episode as a
  held-out item (`evals.run.run_items` on the row the dataset builder makes of it).

They must be equal. A BFCL live_relevance item answered with a call was once stored as a trainable
failure by mining (reference verifier against "no call") while eval scored it correct.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from engines.base import ChatRequest, ChatResult, Engine
from evals.items import eval_task, gate_item, score_answer
from evals.run import run_items
from learner.mine import MineConfig, mine_dataset
from store import repos
from store.db import make_engine, make_session_factory, upgrade
from store.models import Episode
from tools.formats import DatasetItem, load_dataset

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
DATASETS = {
    "xlam": f"xlam:{FIXTURES / 'xlam_sample.json'}",
    "bfcl": f"bfcl:{FIXTURES / 'bfcl' / 'BFCL_v3_sample.json'}",
    "openai": f"openai:{FIXTURES / 'openai_sample.jsonl'}",
    "countdown": f"countdown:{FIXTURES / 'countdown_sample.jsonl'}",
}


class FixedAnswer:
    """An engine that gives the same assistant message to every request (any model name)."""

    name = "fixed"

    def __init__(self, message: dict[str, Any]) -> None:
        self.message = message

    async def chat(self, request: ChatRequest, *, timeout: float | None = None) -> ChatResult:
        return ChatResult(
            message=dict(self.message),
            finish_reason="tool_calls" if self.message.get("tool_calls") else "stop",
            model=request.model or "base",
        )

    def replicas(self) -> list[Engine]:
        return [self]

    def healthy(self) -> bool:
        return True

    async def load_adapter(self, name: str, path: str) -> None: ...

    async def unload_adapter(self, name: str) -> None: ...

    async def list_models(self) -> list[dict[str, Any]]:
        return [{"id": "base", "parent": None}]

    async def health(self) -> bool:
        return True

    async def aclose(self) -> None: ...


def calls_message(calls: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
            for i, (name, args) in enumerate(calls)
        ],
    }


def answers(item: DatasetItem) -> dict[str, dict[str, Any]]:
    """Named answers to try on an item: right, wrong and empty ones for its kind."""
    if item.task == "countdown":
        nums, target = item.extra["nums"], item.extra["target"]
        return {
            "text_no_answer": {"role": "assistant", "content": "I am not sure."},
            "wrong_answer": {
                "role": "assistant",
                "content": f"<answer>{' + '.join(map(str, nums))}</answer>"
                if sum(nums) != target
                else "<answer>0</answer>",
            },
        }
    out = {"no_call": {"role": "assistant", "content": "I cannot help with that."}}
    reference = [(c.name, dict(c.arguments)) for c in item.reference_calls()]
    if reference:
        out["reference"] = calls_message(reference)
    if item.tools:
        tool = item.tools[0]
        out["wrong_call"] = calls_message([(tool.name, {"__not_a_parameter__": 1})])
        if not reference:  # relevance items: any well-formed call of an offered tool
            required = (tool.parameters or {}).get("required", [])
            props = (tool.parameters or {}).get("properties", {})
            guess = {k: 1 if props.get(k, {}).get("type") in ("integer", "number") else "x" for k in required}
            out["some_call"] = calls_message([(tool.name, guess)])
    return out


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[Callable[[], Session]]:
    url = f"sqlite:///{tmp_path / 'rrr.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield make_session_factory(engine)
    engine.dispose()


def mined_status(item: DatasetItem, engine: Engine, sessions: Callable[[], Session]) -> Episode:
    tag = uuid.uuid4().hex
    summary = asyncio.run(mine_dataset([item], engine, sessions, MineConfig(samples=1, task=tag)))
    assert summary.engine_errors == 0
    with sessions() as s:
        [episode] = list(s.query(Episode).filter(Episode.task == tag))
        full = repos.get_episode(s, episode.id)
        assert full is not None
        return full


@pytest.mark.parametrize("fmt", list(DATASETS))
def test_mine_gate_and_eval_agree_on_every_answer(fmt: str, sessions: Callable[[], Session]) -> None:
    items = load_dataset(DATASETS[fmt])
    assert items
    checked = 0
    for item in items:
        task = eval_task(item)
        for label, message in answers(item).items():
            engine = FixedAnswer(message)
            scored = score_answer(task, message, "stop").ok
            episode = mined_status(item, engine, sessions)
            mined = episode.status == "first_ok"
            row = {
                "task_messages": episode.request_messages,
                "tools": episode.request_tools,
                "tool_choice": episode.tool_choice,
                "verifier": episode.verifier,
                "expected": episode.expected_calls,
                "episode_id": episode.id,
            }
            [status] = asyncio.run(run_items(engine, None, [gate_item(row)], max_tokens=64))
            gated = status == "first_ok"
            assert (scored, mined, gated) in ((True, True, True), (False, False, False)), (
                f"{item.id} / {label}: eval {scored}, mine {mined}, gate {gated}"
            )
            assert episode.trainable == (not mined), f"{item.id} / {label}: a failure must be trainable"
            checked += 1
    assert checked >= 2 * len(items)


def test_a_live_relevance_call_is_a_success_everywhere(sessions: Callable[[], Session]) -> None:
    [item] = [i for i in load_dataset(DATASETS["bfcl"]) if i.id.startswith("live_relevance")]
    engine = FixedAnswer(calls_message([("set_timer", {"minutes": 5})]))
    assert score_answer(eval_task(item), engine.message, "tool_calls").ok
    episode = mined_status(item, engine, sessions)
    assert episode.status == "first_ok" and not episode.trainable
