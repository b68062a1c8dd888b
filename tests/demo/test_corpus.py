"""demo/corpus.py and demo/catalog.py: the demo's synthetic tasks and reflection examples.

No model here: answers are checked with the real verifiers, reflection-shaped examples against what
the real agent loop sends to an engine that replays their text.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from agent.loop import LoopConfig, TaskOptions, run_episode
from demo import catalog, phrases
from demo.corpus import (
    CORRUPTIONS,
    DemoItem,
    call_text,
    generate_items,
    reflection_example,
    split_items,
    training_conversations,
)
from demo.diagnosis import restates_call
from engines.base import ChatRequest, ChatResult
from engines.wire import build_chat_completion
from tools.parse import parse_hermes
from tools.spec import ToolSpec
from tools.verify import ModelOutput, verify_execution, verify_reference, verify_schema


@pytest.fixture(scope="module")
def items() -> list[DemoItem]:
    return generate_items(1500, seed=7)


def _output(item: DemoItem, text: str) -> ModelOutput:
    parsed = parse_hermes(text)
    return ModelOutput(tool_calls=parsed.tool_calls, content=parsed.content, parse_error=parsed.error)


def test_catalog_has_a_dozen_valid_tools_with_implementations() -> None:
    specs = [ToolSpec.from_openai(t) for t in catalog.TOOLS]
    assert len(specs) == 12 == len({s.name for s in specs})
    assert set(catalog.FUNCTIONS) == {s.name for s in specs}
    for spec in specs:
        assert callable(getattr(catalog, spec.name))
        assert set(spec.parameters["required"]) <= set(spec.parameters["properties"])
    assert catalog.TOOLS_BY_NAME["get_weather"]["function"]["parameters"]["properties"]["unit"]["enum"] == [
        "celsius",
        "fahrenheit",
    ]
    assert catalog.get_directions("Paris", "Rome", "walking") == catalog.get_directions("Paris", "Rome", "walking")
    with pytest.raises(ValueError):
        catalog.convert_currency(10, "USD", "yen")


def test_same_seed_same_items_other_seed_other_items() -> None:
    assert generate_items(200, seed=3) == generate_items(200, seed=3)
    assert [i.query for i in generate_items(200, seed=4)] != [i.query for i in generate_items(200, seed=3)]
    assert split_items(300, 48, seed=1) == split_items(300, 48, seed=1)


def test_every_known_answer_passes_the_reference_and_schema_verifiers(items: list[DemoItem]) -> None:
    for item in items:
        tools = [ToolSpec.from_openai(t) for t in item.tools]
        assert item.name in item.tool_names and 2 <= len(item.tool_names) <= 4
        output = _output(item, call_text(item.name, item.arguments))
        assert verify_reference(output, item.expected, tools).ok, item
        assert verify_schema(output, tools, "auto").ok, item
    assert {item.name for item in items} == set(catalog.TOOLS_BY_NAME)
    assert {tuple(sorted(item.tool_names)) for item in items if item.name == "get_weather"}.__len__() > 10


def test_known_answers_run_on_the_catalog_implementations(items: list[DemoItem]) -> None:
    firsts = {item.name: item for item in reversed(items)}  # one item per tool
    for item in firsts.values():
        verdict = verify_execution(
            _output(item, call_text(item.name, item.arguments)),
            catalog.FUNCTIONS,
            10.0,
            allowed_modules=("demo.catalog",),
        )
        assert verdict.ok, (item, verdict.reason)


@pytest.mark.parametrize(
    ("needle", "param", "value"),
    [
        ("°F", "unit", "fahrenheit"),
        ("°C", "unit", "celsius"),
        ("Japanese yen", None, "JPY"),
        ("on foot", "mode", "walking"),
        ("by bus", "mode", "transit"),
        ("Apple", "symbol", "AAPL"),
        ("half an hour", "minutes", 30),
        ("into French", "target_language", "fr"),
    ],
)
def test_values_are_mapped_not_copied(items: list[DemoItem], needle: str, param: str | None, value: Any) -> None:
    hits = [item for item in items if needle in item.query]
    assert hits, f"no item says {needle!r}"
    for item in hits:
        values = [item.arguments[param]] if param else list(item.arguments.values())
        assert value in values, item


def test_numbers_and_times_are_written_as_json_writes_them(items: list[DemoItem]) -> None:
    for item in items:
        if item.name in ("convert_currency", "calculate_tip"):
            amount = item.arguments.get("amount", item.arguments.get("bill"))
            assert f" {amount}" in item.query or f"${amount}" in item.query, item
        if "time" in item.arguments:
            hh, mm = item.arguments["time"].split(":")
            assert 0 <= int(hh) <= 23 and mm in ("00", "15", "30", "45")
    said = {"7 pm": "19:00", "10:30 pm": "22:30"}
    for text, expected in said.items():
        for item in items:
            if f"at {text}" in item.query and "time" in item.arguments:
                assert item.arguments["time"] == expected


def test_held_out_is_disjoint_from_training_and_balanced() -> None:
    train, held_out = split_items(3000, 120, seed=0)
    assert not {i.query for i in train} & {i.query for i in held_out}
    assert len({(i.query, i.tool_names) for i in train}) == len(train)
    assert len({i.query for i in held_out}) == len(held_out) == 120
    counts = {name: sum(i.name == name for i in held_out) for name in catalog.TOOLS_BY_NAME}
    assert set(counts.values()) == {10}
    assert {i.name for i in held_out[:12]} == set(catalog.TOOLS_BY_NAME)


def test_reflection_share_is_tunable() -> None:
    items = generate_items(400, seed=2)
    for share in (0.0, 0.1, 0.25):
        convs = training_conversations(items, reflection_share=share, seed=0)
        reflective = sum(c.kind.startswith("reflect/") for c in convs)
        assert reflective / len(convs) == pytest.approx(share, abs=0.01)
    assert training_conversations(items, seed=5) == training_conversations(items, seed=5)
    with pytest.raises(ValueError):
        training_conversations(items, reflection_share=1.0)


class ReplayEngine:
    """An engine that answers with fixed texts, shaped by the engines' own response builder."""

    name = "replay"

    def __init__(self, texts: list[str]) -> None:
        self.texts = list(texts)
        self.requests: list[ChatRequest] = []

    async def chat(self, request: ChatRequest, *, timeout: float | None = None) -> ChatResult:
        self.requests.append(request)
        body = build_chat_completion(
            self.texts.pop(0),
            "stop",
            model="m",
            prompt_tokens=1,
            completion_tokens=1,
            tools=request.tools,
            tool_choice=request.tool_choice or "auto",
        )
        choice = body["choices"][0]
        return ChatResult(message=choice["message"], finish_reason=choice["finish_reason"], model="m")

    async def load_adapter(self, name: str, path: str) -> None: ...

    async def unload_adapter(self, name: str) -> None: ...

    async def list_models(self) -> list[dict[str, Any]]:
        return []

    def replicas(self) -> list[Any]:
        return [self]

    def healthy(self) -> bool:
        return True

    async def health(self) -> bool:
        return True

    async def aclose(self) -> None: ...


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_reflection_examples_are_what_the_serving_loop_sends(items: list[DemoItem], kind: str) -> None:
    rng = random.Random(kind)
    candidates = [i for i in items if kind != "unmapped_value" or i.name in ("get_directions", "get_stock_price")]
    done = 0
    for item in rng.sample(candidates, 80):
        conv = reflection_example(item, rng, kind, variant="correct")
        if conv.kind != f"reflect/{kind}":  # this item cannot be corrupted that way (nothing to map)
            continue
        (reflect_history, reflection), (retry_history, answer) = conv.steps
        assert conv.failed_output is not None
        tools = [ToolSpec.from_openai(t) for t in item.tools]
        assert not verify_reference(_output(item, conv.failed_output), item.expected, tools).ok
        assert answer == call_text(item.name, item.arguments)
        assert conv.variant == "correct"
        assert not restates_call(item, reflection) and "{" not in reflection, reflection

        engine = ReplayEngine([conv.failed_output, reflection, answer])
        request = ChatRequest(messages=item.messages, tools=item.tools)
        outcome = asyncio.run(
            run_episode(engine, request, TaskOptions(verifier="reference", expected=item.expected), LoopConfig())
        )
        assert outcome.status == "retry_ok"
        assert engine.requests[1].messages == reflect_history
        assert engine.requests[2].messages == retry_history
        done += 1
    assert done >= 10


def test_phrase_tables_map_into_the_catalog_enums() -> None:
    assert set(phrases.UNIT_PHRASES.values()) == set(catalog.TEMPERATURE_UNITS)
    assert set(phrases.MODE_PHRASES.values()) == set(catalog.TRAVEL_MODES)
    assert set(phrases.CURRENCY_CODES) == set(catalog.CURRENCY_CODES)
    assert set(phrases.LANGUAGES.values()) == set(catalog.LANGUAGE_CODES)
    assert set(phrases.WEEKDAYS.values()) == set(catalog.WEEKDAYS)
    assert set(phrases.GENRES) == set(catalog.GENRES)
