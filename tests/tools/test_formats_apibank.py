"""The xLAM converter on real data: API-Bank levels 1 and 2 (read from ../shared, never copied here).

Every record must convert, every converted tool must compile, and every reference answer must
pass ``verify_schema`` (and ``verify_reference``) against its converted tools — except records
whose reference answer contradicts its own tool list in the data itself (listed below with the
evidence; the test fails if one of them starts passing or any other record fails).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tools.formats import load_dataset
from tools.schema import validate_tool_specs
from tools.verify import ModelOutput, verify_reference, verify_schema

SHARED = Path(os.environ.get("RRR_SHARED_DIR") or Path(__file__).resolve().parents[2] / ".." / "shared")
APIBANK = SHARED / "data" / "apibank"

# Defects of the data, not of the converter: the answer names a parameter the offered tool does not
# have (``device_id``; the tool's only name parameter is ``name``), or a tool that is not offered.
KNOWN_DEFECTS = {
    "apibank_l1.json": {
        "61": "CancelTimedSwitch answer uses device_id, the tool takes name",
        "130": "CancelTimedSwitch answer uses device_id, the tool takes name",
        "164": "CancelTimedSwitch answer uses device_id, the tool takes name",
        "167": "CancelTimedSwitch answer uses device_id, the tool takes name",
        "215": "CancelTimedSwitch answer uses device_id, the tool takes name",
        "261": "TimedSwitch answer uses device_id, the tool takes name",
        "270": "TimedSwitch answer uses device_id, the tool takes name",
        "357": "TimedSwitch answer uses device_id, the tool takes name",
    },
    "apibank_l2.json": {
        "26": "answer calls DeleteReminder; offered: GetUserToken, AddReminder",
        "66": "answer calls AddMeeting; offered: GetUserToken, QueryAgenda",
        "81": "answer calls QueryMeeting; offered: GetUserToken, AddMeeting",
        "104": "answer calls GetUserToken; offered: BookHotel",
        "105": "answer calls AddMeeting; offered: BookHotel",
        "117": "answer calls DeleteMeeting; offered: GetUserToken, ModifyMeeting",
    },
}
SIZES = {"apibank_l1.json": 399, "apibank_l2.json": 127}


@pytest.fixture(params=sorted(SIZES))
def apibank_file(request: pytest.FixtureRequest) -> Path:
    path = APIBANK / request.param
    if not path.is_file():
        pytest.skip(f"API-Bank data not found at {path} (set RRR_SHARED_DIR)")
    return path


def test_every_record_converts_and_every_answer_is_valid(apibank_file: Path) -> None:
    items = load_dataset(f"xlam:{apibank_file}")
    assert len(items) == SIZES[apibank_file.name]
    known = KNOWN_DEFECTS[apibank_file.name]
    failures: list[str] = []
    defects_seen: set[str] = set()
    for index, item in enumerate(items):
        assert item.id == str(index)
        try:
            validate_tool_specs(item.tools)
        except ValueError as exc:
            failures.append(f"record {index}: tools do not compile: {exc}")
            continue
        if not item.expected or item.messages[0]["role"] != "user":
            failures.append(f"record {index}: no reference answer or no opening user turn")
            continue
        output = ModelOutput(tool_calls=item.reference_calls())
        verdict = verify_schema(output, item.tools)
        if verdict.ok != (item.id not in known):
            if verdict.ok:
                failures.append(f"record {index}: listed as a data defect ({known[item.id]}) but passes")
            else:
                failures.append(f"record {index}: verify_schema: {verdict.reason}")
        if not verdict.ok:
            if item.id in known:
                defects_seen.add(item.id)
            continue
        reference = verify_reference(output, item.expected, tools=item.tools)
        if not reference.ok:
            failures.append(f"record {index}: verify_reference: {reference.reason}")
    assert failures == [], "\n".join(failures)
    assert defects_seen == set(known), f"known defects that did not show: {set(known) - defects_seen}"


def test_api_bank_strings_become_declared_types(apibank_file: Path) -> None:
    """API-Bank writes every argument as a string; ints, bools and lists are decoded."""
    items = load_dataset(f"xlam:{apibank_file}")
    kinds: set[str] = set()
    for item in items:
        tools = {t.name: t for t in item.tools}
        for call in item.reference_calls():
            if call.name not in tools:
                continue
            props = tools[call.name].parameters["properties"]
            for name, value in call.arguments.items():
                declared = props.get(name, {}).get("type")
                if declared in ("integer", "boolean", "array"):
                    kinds.add(declared)
                    assert not isinstance(value, str), (item.id, call.name, name, value)
    assert "integer" in kinds and "array" in kinds


def test_dialogue_turns_become_chat_messages(apibank_file: Path) -> None:
    items = load_dataset(f"xlam:{apibank_file}")
    call_ids_answered = 0
    for item in items:
        issued: set[str] = set()
        for msg in item.messages:
            assert msg["role"] in ("user", "assistant", "tool"), (item.id, msg)
            if msg["role"] == "assistant" and "tool_calls" in msg:
                issued |= {c["id"] for c in msg["tool_calls"]}
                assert msg["content"] is None
            elif msg["role"] == "tool":
                assert msg["tool_call_id"] in issued, item.id
                call_ids_answered += 1
            else:
                assert isinstance(msg["content"], str)
    assert call_ids_answered > 0
