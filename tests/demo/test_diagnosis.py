"""demo/diagnosis.py: reflections that point at the evidence without restating the call, and retries that follow them.

No model here. Every synthetic corruption kind of ``demo.corpus`` and hand-written failures of the
kinds a tiny policy makes on its own (several wrong values, a swap, the wrong tool, no call) are
diagnosed; a retry that does what the correct diagnosis says must pass the reference verifier, one
that follows the generic or a wrong diagnosis must not.
"""

from __future__ import annotations

import json
import random

import pytest

from demo import diagnosis
from demo.corpus import (
    CORRUPTIONS,
    REFLECTION_MIX,
    DemoItem,
    call_text,
    generate_items,
    passes,
    reflection_example,
    training_conversations,
)
from demo.diagnosis import GENERIC, FailedCall, Fault, diagnose, follow, reflection_text, restates_call, value_span


@pytest.fixture(scope="module")
def items() -> list[DemoItem]:
    return generate_items(1200, seed=11)


def _item(name: str, items: list[DemoItem], **want: object) -> DemoItem:
    for item in items:
        matches = all(item.arguments.get(k) == v or v is ... for k, v in want.items())
        if item.name == name and matches and set(want) <= set(item.arguments):
            return item
    raise LookupError(name)


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_every_variant_is_followed_by_the_retry_it_implies(items: list[DemoItem], kind: str) -> None:
    rng = random.Random(kind)
    seen = {v: 0 for v in REFLECTION_MIX}
    for item in items[:400]:
        for variant in REFLECTION_MIX:
            conv = reflection_example(item, rng, kind, variant=variant)
            if conv.kind != f"reflect/{kind}":
                continue
            (_, reflection), (_, retry) = conv.steps
            assert not restates_call(item, reflection), reflection
            assert "<tool_call>" not in reflection and "{" not in reflection
            assert passes(item, retry) == (conv.variant == "correct"), (
                item.query,
                conv.failed_output,
                reflection,
                retry,
            )
            seen[conv.variant] += 1
    assert seen["correct"] >= 20 and seen["generic"] >= 20
    if kind not in diagnosis.STRUCTURAL | {"broken_json", "wrong_tool"}:
        assert seen["wrong"] >= 10


def test_a_wrong_value_points_at_the_request_span(items: list[DemoItem]) -> None:
    item = _item("get_directions", items)
    args = dict(item.arguments, destination="Nowhere Street")
    failed = FailedCall.parse(call_text(item.name, args))
    faults = diagnose(item, failed)
    assert faults == [Fault("wrong_value", ("destination",))]
    text = reflection_text(item, faults)
    assert text == f'destination should be "{item.arguments["destination"]}".'
    assert item.arguments["destination"] in item.query
    assert passes(item, follow(item, failed, faults))
    assert not passes(item, follow(item, failed, []))  # the generic reflection changes nothing


def test_a_swap_several_values_and_a_missing_one_are_each_named(items: list[DemoItem]) -> None:
    item = _item("get_directions", items, mode=...)
    args = dict(item.arguments)
    args["origin"], args["destination"] = args["destination"], args["origin"]
    del args["mode"]
    failed = FailedCall.parse(call_text(item.name, args))
    faults = diagnose(item, failed)
    assert faults == [Fault("swapped", ("origin", "destination")), Fault("missing_param", ("mode",))]
    text = reflection_text(item, faults)
    assert text.startswith("origin and destination are swapped. I left out mode: ")
    assert passes(item, follow(item, failed, faults))
    assert not passes(item, follow(item, failed, faults[:1]))  # half a diagnosis fixes half the call


def test_mapped_values_quote_what_the_user_wrote() -> None:
    assert value_span("How warm is it in Oslo in °F?", "unit", "fahrenheit") == ("in °F", True)
    assert value_span("Tell me the temperature in Lima, metric", "unit", "celsius") == ("metric", True)
    assert value_span("Reserve Sakura for four people at 7 pm", "party_size", 4) == ("four", True)
    assert value_span("Reserve Sakura for four people at 7 pm", "time", "19:00") == ("7 pm", True)
    assert value_span("Book a table for 4 at 14:00", "party_size", 4) == ("4", False)  # not the 4 of 14:00
    assert value_span("Convert 40 yen to euros", "from_currency", "JPY") == ("yen", True)
    assert value_span("Email ann@mail.com about rent", "to", "ann@mail.com") == ("ann@mail.com", False)


def test_structural_failures_get_the_correct_call_after_the_right_diagnosis(items: list[DemoItem]) -> None:
    item = items[0]
    other = next(n for n in item.tool_names if n != item.name)
    for text, kind in (
        (call_text(other, item.arguments), "wrong_tool"),
        ("I cannot help with that.", "no_call"),
        ('<tool_call>\n{"name": ' + json.dumps(item.name) + ', "arguments": {\n</tool_call>', "broken_json"),
        (call_text(item.name, item.arguments) + "\n" + call_text(item.name, item.arguments), "extra_call"),
    ):
        failed = FailedCall.parse(text)
        faults = diagnose(item, failed)
        assert [f.kind for f in faults] == [kind]
        assert passes(item, follow(item, failed, faults))
        assert not passes(item, follow(item, failed, []))
        assert diagnosis.wrong_diagnosis(item, failed, random.Random(0)) is None


def test_a_correct_call_has_nothing_to_diagnose(items: list[DemoItem]) -> None:
    item = items[3]
    assert diagnose(item, FailedCall.parse(call_text(item.name, item.arguments))) == []
    assert reflection_text(item, []) == GENERIC


def test_restated_calls_are_caught(items: list[DemoItem]) -> None:
    item = _item("convert_currency", items)
    assert restates_call(item, call_text(item.name, item.arguments))
    assert restates_call(item, "The correct call is " + json.dumps(item.arguments))
    values = " ".join(str(v) for v in item.arguments.values())
    assert restates_call(item, f"I should call {item.name} with {values}.")
    assert not restates_call(item, f'amount should be "{item.arguments["amount"]}".')


def test_the_mix_sets_how_often_each_reflection_is_the_target(items: list[DemoItem]) -> None:
    convs = training_conversations(items, reflection_share=0.5, seed=3, mix={"correct": 1, "generic": 0, "wrong": 0})
    assert {c.variant for c in convs if c.kind != "answer"} == {"correct"}
    convs = training_conversations(items, reflection_share=0.5, seed=3)
    shares = {v: sum(c.variant == v for c in convs) / sum(c.kind != "answer" for c in convs) for v in REFLECTION_MIX}
    assert abs(shares["generic"] - REFLECTION_MIX["generic"]) < 0.06
    assert shares["correct"] >= REFLECTION_MIX["correct"] - 0.06  # a variant a failure lacks falls back to correct
