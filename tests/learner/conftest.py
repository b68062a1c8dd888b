"""Fixtures for the learner tests: a migrated store (SQLite, and PostgreSQL when
`RRR_TEST_DATABASE_URL` is set) and an episode factory shaped like what the serving loop records."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from agent import prompts
from store.db import make_engine, make_session_factory
from store.records import AttemptRecord, EpisodeRecord
from tests.conftest import ToolModel
from tests.support.db import backends, migrated_database

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WEATHER_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture(params=backends())
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A freshly migrated, empty store."""
    with migrated_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def session_factory(database_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(database_url)
    yield make_session_factory(engine)
    engine.dispose()


# The cycle tests' engines: one serving LocalEngine (adapters published by a test are unloaded after
# it) and one for the gate, per module, over the tiny tool model.
@pytest.fixture(scope="module")
def serving(tiny_tool_model: ToolModel) -> Any:
    from engines.local import LocalEngine

    return LocalEngine(str(tiny_tool_model.path), served_name="tiny", max_lora_rank=16, name="serving")


@pytest.fixture(scope="module")
def evaluator(tiny_tool_model: ToolModel) -> Any:
    from engines.local import LocalEngine

    return LocalEngine(str(tiny_tool_model.path), served_name="tiny", max_lora_rank=16, name="eval")


@pytest.fixture(autouse=True)
def clean_serving(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "serving" in request.fixturenames:
        engine = request.getfixturevalue("serving")
        for card in asyncio.run(engine.list_models())[1:]:
            asyncio.run(engine.unload_adapter(card["id"]))


def call(city: str, name: str = "get_weather", call_id: str = "c1") -> dict[str, Any]:
    """A tool call as the engine returns it (OpenAI shape, arguments as a JSON string)."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps({"city": city})}}


def episode(
    *,
    status: str = "failed",
    client: str | None = "key-a",
    minutes: float = 0,
    city: str = "Paris",
    verifier: Any = None,
    expected: Any = "default",
    trainable: bool | None = None,
    episode_id: str | None = None,
    task: str | None = None,
    messages: list[dict[str, Any]] | None = None,
) -> EpisodeRecord:
    """One served request. `failed`/`retry_ok`: a wrong first call (Rome), a reflection, a retry;
    `first_ok`: one right call. `expected` defaults to the right call for `city`."""
    spec = verifier if verifier is not None else {"type": "reference"}
    exp = [{"name": "get_weather", "arguments": {"city": city}}] if expected == "default" else expected
    if status == "first_ok":
        attempts = [AttemptRecord(kind="answer", tool_calls=[call(city)], finish_reason="tool_calls", ok=True)]
    else:
        attempts = [
            AttemptRecord(
                kind="answer",
                tool_calls=[call("Rome")],
                finish_reason="tool_calls",
                ok=False,
                reason="city: expected 'Paris', got 'Rome'",
            ),
            AttemptRecord(kind="reflection", text="I used the wrong city.", finish_reason="stop"),
            AttemptRecord(
                kind="retry",
                tool_calls=[call(city if status == "retry_ok" else "Oslo")],
                finish_reason="tool_calls",
                ok=status == "retry_ok",
            ),
        ]
    rec = EpisodeRecord(
        status=status,
        messages=messages or [{"role": "user", "content": f"What is the weather in {city}?"}],
        tools=WEATHER_TOOLS,
        tool_choice=None,
        verifier=spec,
        expected_calls=exp,
        task=task,
        client_key_id=client,
        model="tiny",
        created_at=T0 + timedelta(minutes=minutes),
        attempts=attempts,
        trainable=(status in ("failed", "retry_ok")) if trainable is None else trainable,
    )
    if episode_id is not None:
        rec.id = episode_id
    return rec


# --- a controlled task for the training tests ------------------------------------------------------
#
# A tiny model is taught in-process (about 200 supervised steps) two things: its reflection to a
# failed get_weather call is "Use X." with X drawn from three cities regardless of the request, and
# its retry calls get_weather with exactly the city its reflection named (copying is learned from
# reflections naming many cities). Retry success therefore depends only on what the reflection
# says, and GRPO on the reflection tokens has something to learn.

CUES = {"French": "Paris", "English": "London", "German": "Berlin"}
TASK_CITIES = list(CUES.values())
COPY_CITIES = [
    "Paris",
    "London",
    "Berlin",
    "Tokyo",
    "Rome",
    "Lisbon",
    "Oslo",
    "Cairo",
    "Lima",
    "Toronto",
    "Seoul",
    "Mumbai",
    "Boston",
    "Denver",
    "Vienna",
    "Prague",
    "Zurich",
    "Athens",
    "Warsaw",
]
TRAIN_TEMPLATES = [
    "Weather in the {cue} city?",
    "How warm is the {cue} city today?",
    "Is it raining in the {cue} city?",
    "Give me the forecast for the {cue} city.",
]
HELDOUT_TEMPLATES = ["What is the weather like in the {cue} city?", "Tell me the temperature in the {cue} city please."]
# A short chat template (the paper's reflection prompt is long enough): tool names only.
COMPACT_TEMPLATE = (
    "{% if tools %}<|im_start|>system{{ '\\n' }}<tools>{% for t in tools %}{{ t.function.name }}{% endfor %}"
    "</tools><|im_end|>{{ '\\n' }}{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}{{ '\\n' }}{{ m.content or '' }}<|im_end|>{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant{{ '\\n' }}{% endif %}"
)


def weather_call_text(city: str) -> str:
    arguments = json.dumps({"city": city})
    return f'<tool_call>\n{{"name": "get_weather", "arguments": {arguments}}}\n</tool_call>'


def task_rows(templates: list[str], target: str | None = None) -> list[dict[str, Any]]:
    """FailureRows of the controlled task: the first attempt called get_weather without a city.
    The reference answer is the cue's city, or `target` for every row when given."""
    rows = []
    for template in templates:
        for cue, city in CUES.items():
            task = [{"role": "user", "content": template.format(cue=cue)}]
            failed = {"id": "c0", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            history = prompts.reflection_messages(task, prompts.failed_assistant_message(None, [failed]))
            rows.append(
                {
                    "episode_id": f"task-{len(rows)}",
                    "client_key_id": None,
                    "task_messages": task,
                    "prompt_messages": history,
                    "tools": WEATHER_TOOLS,
                    "tool_choice": None,
                    "verifier": {"type": "reference"},
                    "expected": [{"name": "get_weather", "arguments": {"city": target or city}}],
                }
            )
    return rows


@pytest.fixture(scope="session")
def task_base_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny model whose tokenizer knows the task's words and whose template is compact."""
    pytest.importorskip("trl")
    from transformers import AutoTokenizer

    from learner.tiny import TinyModelConfig, build_tiny_model

    corpus = [prompts.REFLECTION_PROMPT + " " + prompts.RETRY_PROMPT] * 200 + [
        t.format(cue=c) for t in TRAIN_TEMPLATES + HELDOUT_TEMPLATES for c in CUES
    ] * 20
    out = build_tiny_model(
        tmp_path_factory.mktemp("task") / "base",
        seed=0,
        extra_corpus=corpus,
        config=TinyModelConfig(hidden_size=64, intermediate_size=256),
    )
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.chat_template = COMPACT_TEMPLATE
    tokenizer.save_pretrained(out)
    return out


def teach_task_model(
    base: Path, out: Path, *, steps: int = 200, lr: float = 1e-2, batch: int = 16, seed: int = 0
) -> Path:
    """Supervised teaching of the controlled task (full fine-tuning, answer and reflection tokens only)."""
    import random

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)

    def encode(text: str) -> list[int]:
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def render(messages: list[dict[str, Any]]) -> str:
        return str(
            tokenizer.apply_chat_template(messages, tools=WEATHER_TOOLS, add_generation_prompt=True, tokenize=False)
        )

    reflect: list[tuple[list[int], list[int]]] = []  # reflection and retry both supervised
    copy: list[tuple[list[int], list[int]]] = []  # retry only (the reflection names any city)
    for row in task_rows(TRAIN_TEMPLATES + HELDOUT_TEMPLATES):
        before = encode(render(row["prompt_messages"]))
        for kind, city in [("reflect", c) for c in TASK_CITIES] + [("copy", c) for c in COPY_CITIES]:
            reflection = f"Use {city}."
            r_ids = encode(reflection + "<|im_end|>")
            retry = encode(render(prompts.retry_messages(row["prompt_messages"], reflection)))
            assert retry[: len(before) + len(r_ids)] == before + r_ids
            answer = encode(weather_call_text(city) + "<|im_end|>")
            shown = r_ids if kind == "reflect" else [-100] * len(r_ids)
            labels = [-100] * len(before) + shown + [-100] * (len(retry) - len(before) - len(r_ids)) + answer
            (reflect if kind == "reflect" else copy).append((retry + answer, labels))
    rng = random.Random(seed)
    pad = tokenizer.pad_token_id
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model: Any = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
            model.train()
            optim = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
            for step in range(steps):
                chosen = rng.sample(reflect, batch // 2) + rng.sample(copy, batch - batch // 2)
                width = max(len(ids) for ids, _ in chosen)
                input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in chosen])
                labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in chosen])
                mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in chosen])
                for group in optim.param_groups:
                    group["lr"] = lr * min(1.0, (step + 1) / 20)
                loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
                optim.zero_grad()
                loss.backward()
                optim.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def taught_model_dir(task_base_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The controlled task's model after teaching (about 30-40 s on 2 cores, once per session)."""
    return teach_task_model(task_base_dir, tmp_path_factory.mktemp("taught") / "model")


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny models train fastest on one thread (and leave the other core to the test's children)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def evaluate_retry_success(
    trainer: Any, reward: Any, rows: list[dict[str, Any]], *, samples: int, seed: int, max_tokens: int
) -> float:
    """Mean reward over `samples` reflections per row, sampled at temperature 1 from the trainer's
    current policy and scored by the training reward itself (retry by the same policy)."""
    import torch

    from learner.rows import render_rows
    from learner.trl_compat import generate_with_policy

    tokenizer = reward.tokenizer
    rendered = [r for r in render_rows(rows, tokenizer) for _ in range(samples)]
    prompt_ids = [list(tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]) for r in rendered]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        reflections = generate_with_policy(trainer, prompt_ids, max_tokens, 1.0)
        columns = {k: [r[k] for r in rendered] for k in rendered[0] if k != "prompt"}
        rewards = reward(
            prompts=[r["prompt"] for r in rendered],
            completions=[""] * len(rendered),
            completion_ids=reflections,
            **columns,
        )
    return float(sum(rewards) / len(rewards))
