"""Dataset converters on hand-written fixtures: xLAM, BFCL, OpenAI JSON Lines, countdown."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tools.formats import (
    DatasetError,
    DatasetItem,
    bfcl_category,
    coerce_value,
    convert_tools,
    convert_xlam_record,
    convert_xlam_tools,
    load_bfcl,
    load_dataset,
    normalize_schema,
    parse_type,
)
from tools.spec import ToolSpec

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
XLAM = FIXTURES / "xlam_sample.json"
BFCL = FIXTURES / "bfcl" / "BFCL_v3_sample.json"
BFCL_ANSWERS = FIXTURES / "bfcl" / "possible_answer" / "BFCL_v3_sample.json"
OPENAI = FIXTURES / "openai_sample.jsonl"
COUNTDOWN = FIXTURES / "countdown_sample.jsonl"


def by_id(items: list[DatasetItem], item_id: str) -> DatasetItem:
    return next(i for i in items if i.id == item_id)


# ---------------------------------------------------------------- type strings


@pytest.mark.parametrize(
    ("text", "schema", "optional"),
    [
        ("str", {"type": "string"}, False),
        ("int", {"type": "integer"}, False),
        ("float", {"type": "number"}, False),
        ("bool", {"type": "boolean"}, False),
        ("list", {"type": "array"}, False),
        ("List[str]", {"type": "array", "items": {"type": "string"}}, False),
        ("list(str)", {"type": "array", "items": {"type": "string"}}, False),
        (
            "List[List[int]]",
            {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
            False,
        ),
        ("dict", {"type": "object"}, False),
        ("Dict[str, Any]", {"type": "object"}, False),
        ("Dict[str, int]", {"type": "object", "additionalProperties": {"type": "integer"}}, False),
        ("Optional[int]", {"type": ["integer", "null"]}, True),
        ("int, optional", {"type": "integer"}, True),
        ("Union[str, int]", {"anyOf": [{"type": "string"}, {"type": "integer"}]}, False),
        ("Union[int, None]", {"type": ["integer", "null"]}, True),
        ("str | None", {"type": ["string", "null"]}, True),
        ("Tuple[float, float]", {"type": "array", "items": {"type": "number"}}, False),
        ("Tuple[int, ...]", {"type": "array", "items": {"type": "integer"}}, False),
        ("Tuple[int, str]", {"type": "array"}, False),
        ("Any", {}, False),
        ("Literal['a', 'b']", {"enum": ["a", "b"]}, False),
        ("Optional[List[str]]", {"type": ["array", "null"], "items": {"type": "string"}}, True),
    ],
)
def test_parse_type(text: str, schema: dict, optional: bool) -> None:
    info = parse_type(text)
    assert info.schema == schema
    assert info.optional is optional


def test_unknown_type_is_unconstrained_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert parse_type("Callable[[int], str]").schema == {}
        assert parse_type("pd.DataFrameish").schema == {}
    assert "Callable[[int], str]" in caplog.text


def test_normalize_bfcl_schema_recursively() -> None:
    schema = normalize_schema(
        {
            "type": "dict",
            "properties": {
                "a": {"type": "float"},
                "b": {"type": "tuple", "items": {"type": "dict", "properties": {"c": {"type": "any"}}}},
                "d": {"type": "array", "items": {"type": "integer"}, "description": "kept"},
                "e": {"type": "boolean", "default": False},
            },
            "required": ["a"],
        }
    )
    assert schema == {
        "type": "object",
        "properties": {
            "a": {"type": "number"},
            "b": {"type": "array", "items": {"type": "object", "properties": {"c": {}}}},
            "d": {"type": "array", "items": {"type": "integer"}, "description": "kept"},
            "e": {"type": "boolean", "default": False},
        },
        "required": ["a"],
    }


# ---------------------------------------------------------------- xLAM


def test_xlam_tools_and_answers_given_as_json_strings() -> None:
    items = load_dataset(f"xlam:{XLAM}")
    item = items[0]
    assert item.id == "7"
    assert item.messages == [{"role": "user", "content": "What's the weather in Paris right now?"}]
    assert item.tools[0].parameters == {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "City name."},
            "unit": {"type": "string", "description": "celsius or fahrenheit.", "default": "celsius"},
        },
        "required": ["city"],
    }
    # The optional unit was not in the answer: it may be omitted or given its default.
    assert item.expected == [{"get_weather": {"city": ["Paris"], "unit": ["", "celsius"]}}]
    assert item.task == "tool_call"


def test_xlam_optional_union_list_types_and_required_rule() -> None:
    item = load_dataset(f"xlam:{XLAM}")[1]
    assert item.id == "1"  # no id in the record: its index
    params = item.tools[0].parameters
    props = params["properties"]
    assert props["limit"]["type"] == ["integer", "null"]
    assert props["price"]["anyOf"] == [{"type": "string"}, {"type": "integer"}]
    assert props["tags"]["items"] == {"type": "string"}
    assert props["location"] == {
        "type": "array",
        "items": {"type": "number"},
        "description": "Latitude and longitude.",
    }
    assert props["filters"]["type"] == "object"
    # Optional -> not required; a default -> not required; everything else required.
    assert params["required"] == ["cuisine", "location", "tags", "price"]
    assert item.expected == [
        {
            "search_restaurants": {
                "cuisine": ["Italian"],
                "location": [[48.85, 2.35]],
                "limit": [3],
                "tags": [["pasta", "pizza"]],
                "open_now": [True],
                "price": [2],
                "filters": ["", {}],
            }
        }
    ]


def test_xlam_dialogue_turns_and_stringified_answer_values() -> None:
    item = load_dataset(f"xlam:{XLAM}")[2]
    roles = [m["role"] for m in item.messages]
    assert roles == ["user", "assistant", "assistant", "tool", "assistant", "user", "assistant"]
    call_msg = item.messages[2]
    assert call_msg["content"] is None
    (call,) = call_msg["tool_calls"]
    assert call["function"]["name"] == "GetAccount"
    assert json.loads(call["function"]["arguments"]) == {"username": "kim"}
    assert item.messages[3] == {"role": "tool", "tool_call_id": call["id"], "content": "{'account': 42}"}
    assert item.messages[1] == {"role": "assistant", "content": "Sure. First I need your account."}
    book = next(t for t in item.tools if t.name == "BookTable")
    # "[Optional]" in the description makes a parameter optional; no other markers here.
    assert book.parameters["required"] == ["account", "people", "guests", "outdoor"]
    assert book.parameters["properties"]["guests"]["items"] == {"type": "string"}
    # API-Bank style strings are decoded to the declared types.
    assert item.expected == [
        {"BookTable": {"account": [42], "people": [3], "guests": [["Ana", "Bo"]], "outdoor": [True]}}
    ]


def test_xlam_irrelevance_and_json_schema_parameters() -> None:
    items = load_dataset(f"xlam:{XLAM}")
    assert by_id(items, "no-call").expected == []
    item = by_id(items, "schema-form")
    assert item.tools[0].parameters["required"] == ["q"]
    assert item.expected == [{"search_docs": {"q": ["retry"], "n": [5]}}]


def test_xlam_json_lines_equals_json_array(tmp_path: Path) -> None:
    records = json.loads(XLAM.read_text())
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    from_array = load_dataset(f"xlam:{XLAM}")
    from_lines = load_dataset(f"xlam:{jsonl}")
    assert [(i.id, i.messages, i.tools, i.expected) for i in from_array] == [
        (i.id, i.messages, i.tools, i.expected) for i in from_lines
    ]


@pytest.mark.parametrize(
    ("value", "schema", "result"),
    [
        ("3", {"type": "integer"}, 3),
        ("3", {"type": "string"}, "3"),
        ("3.5", {"type": "integer"}, "3.5"),  # not an integer: stays wrong
        ("2", {"type": "number"}, 2),
        ("False", {"type": "boolean"}, False),
        ("true", {"type": "boolean"}, True),
        ("['a', 'b']", {"type": "array"}, ["a", "b"]),
        ("{'k': 1}", {"type": "object"}, {"k": 1}),
        ("(1, 2)", {"type": "array"}, [1, 2]),
        ("nope", {"type": "integer"}, "nope"),
        ("5", {}, "5"),
        ("5", {"anyOf": [{"type": "string"}, {"type": "integer"}]}, "5"),
        ("5", {"type": ["integer", "null"]}, 5),
        (7, {"type": "string"}, 7),
    ],
)
def test_coerce_value(value: object, schema: dict, result: object) -> None:
    assert coerce_value(value, schema) == result
    assert type(coerce_value(value, schema)) is type(result)


def test_xlam_explicit_required_flag_and_optional_markers() -> None:
    tools = convert_xlam_tools(
        [
            {
                "name": "f",
                "parameters": {
                    "a": {"type": "str", "required": False},
                    "b": {"type": "str", "default": "x", "required": True},
                    "c": {"type": "str", "description": "Only needed for the second call."},
                    "d": {"type": "str", "description": "(optional) a note"},
                    "e": {"type": "Optional[str]", "default": None},
                    "f": "int",
                },
            }
        ]
    )
    params = tools[0].parameters
    assert params["required"] == ["b", "f"]
    assert params["properties"]["f"] == {"type": "integer"}
    assert params["properties"]["e"]["type"] == ["string", "null"]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"tools": [], "answers": []}, "missing 'query'"),
        ({"query": "q", "tools": "[not json", "answers": []}, "'tools' is a string but not valid JSON"),
        ({"query": "q", "tools": [{"description": "x"}], "answers": []}, "non-empty string 'name'"),
        ({"query": "q", "tools": [], "answers": [{"arguments": {}}]}, "answer 0"),
        (
            {"query": [{"role": "narrator", "content": "x"}], "tools": [], "answers": []},
            "unknown role 'narrator'",
        ),
        ({"query": [{"role": "tool", "content": "x"}], "tools": [], "answers": []}, "no tool call before it"),
        (
            {"query": "q", "tools": [{"name": "f", "parameters": {"a": 3}}], "answers": []},
            "parameter 'a' must be an object",
        ),
    ],
)
def test_xlam_bad_records_name_the_record(record: dict, message: str) -> None:
    with pytest.raises(DatasetError) as info:
        convert_xlam_record(record, 4)
    assert "record 4" in str(info.value)
    assert message in str(info.value)


def test_bad_files_name_the_file_and_place(tmp_path: Path) -> None:
    bad_line = tmp_path / "bad.jsonl"
    bad_line.write_text('{"query": "q", "tools": [], "answers": []}\n{oops\n')
    with pytest.raises(DatasetError, match=r"bad\.jsonl, line 2: not valid JSON"):
        load_dataset(f"xlam:{bad_line}")
    bad_record = tmp_path / "bad.json"
    bad_record.write_text('[{"query": "q", "tools": [], "answers": []}, {"query": "q"}]')
    with pytest.raises(DatasetError, match=r"bad\.json, record 1: missing 'answers'"):
        load_dataset(f"xlam:{bad_record}")
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset(f"xlam:{tmp_path / 'absent.json'}")
    with pytest.raises(DatasetError, match="unknown dataset format 'csv'"):
        load_dataset(f"csv:{bad_record}")
    with pytest.raises(DatasetError, match="FORMAT:PATH"):
        load_dataset(str(bad_record.name))
    with pytest.raises(DatasetError, match="only applies to the bfcl format"):
        load_dataset(f"xlam:{XLAM}", answers=str(BFCL_ANSWERS))


# ---------------------------------------------------------------- BFCL


@pytest.mark.parametrize(
    ("item_id", "category"),
    [
        ("simple_0", "simple"),
        ("parallel_multiple_12", "parallel_multiple"),
        ("live_simple_3-1-0", "live_simple"),
        ("live_irrelevance_10-2-0", "live_irrelevance"),
        ("simple_python_4", "simple_python"),
        ("odd", "odd"),
    ],
)
def test_bfcl_category(item_id: str, category: str) -> None:
    assert bfcl_category(item_id) == category


def test_bfcl_items_categories_and_answers_found_by_layout() -> None:
    items = load_dataset(f"bfcl:{BFCL}")  # possible_answer/ next to the file is found
    assert [i.category for i in items] == [
        "simple",
        "simple",
        "multiple",
        "parallel",
        "parallel_multiple",
        "irrelevance",
        "live_simple",
        "live_multiple",
        "live_parallel",
        "live_parallel_multiple",
        "live_irrelevance",
        "live_relevance",
    ]
    assert by_id(items, "simple_0").expected == [
        {"calculate_triangle_area": {"base": [10], "height": [5], "unit": ["units", ""]}}
    ]
    assert by_id(items, "irrelevance_0").expected == []
    assert by_id(items, "live_irrelevance_0-0-0").expected == []
    assert by_id(items, "live_relevance_0-0-0").extra["relevance"] is True
    assert [m["role"] for m in by_id(items, "live_simple_0-0-0").messages] == ["system", "user"]
    assert len(by_id(items, "parallel_0").expected) == 2
    explicit = load_bfcl(BFCL, BFCL_ANSWERS)
    assert [(i.id, i.expected) for i in explicit] == [(i.id, i.expected) for i in items]


def test_bfcl_dotted_names_become_openai_names() -> None:
    items = load_dataset(f"bfcl:{BFCL}", answers=str(BFCL_ANSWERS))
    item = by_id(items, "multiple_0")
    assert [t.name for t in item.tools] == ["get_stock_price", "currency_convert"]
    assert item.extra["tool_names"] == {"currency_convert": "currency.convert"}
    assert list(item.expected[0]) == ["currency_convert"]
    assert item.expected[0]["currency_convert"]["from_currency"] == ["USD", "dollars", "US dollars"]
    assert item.tools[1].parameters["properties"]["amount"]["type"] == "number"
    assert "tool_names" not in by_id(items, "simple_0").extra


def test_bfcl_types_normalised() -> None:
    item = by_id(load_dataset(f"bfcl:{BFCL}"), "live_simple_0-0-0")
    params = item.tools[0].parameters
    assert params["type"] == "object"
    props = params["properties"]
    assert props["settings"]["type"] == "object"
    assert props["settings"]["properties"]["target"] == {"type": "number"}
    assert props["settings"]["required"] == ["mode", "target"]
    assert props["window"] == {
        "type": "array",
        "description": "Start and end time.",
        "items": {"type": "string"},
    }
    assert props["note"] == {"description": "Anything."}
    assert params["required"] == ["room", "settings", "window"]


def test_bfcl_without_answer_file_is_marked(tmp_path: Path) -> None:
    lone = tmp_path / "BFCL_v3_sample.json"
    lone.write_text(BFCL.read_text())
    items = load_dataset(f"bfcl:{lone}")
    assert by_id(items, "simple_0").extra["has_ground_truth"] is False
    assert "has_ground_truth" not in by_id(items, "irrelevance_0").extra


def test_bfcl_java_parameters_are_strings(tmp_path: Path) -> None:
    q = tmp_path / "java.json"
    fn = {
        "name": "Sorter.sort",
        "description": "Sort.",
        "parameters": {"type": "dict", "properties": {"arr": {"type": "Array", "description": "Data."}}},
    }
    q.write_text(json.dumps({"id": "java_0", "question": [[{"role": "user", "content": "x"}]], "function": [fn]}))
    (item,) = load_dataset(f"bfcl:{q}")
    prop = item.tools[0].parameters["properties"]["arr"]
    assert prop["type"] == "string"
    assert "Java Array" in prop["description"]


@pytest.mark.parametrize(
    ("question", "answer", "message"),
    [
        ({"question": [[{"role": "user", "content": "x"}]], "function": []}, None, "missing string 'id'"),
        ({"id": "simple_0", "function": []}, None, "missing 'question'"),
        (
            {"id": "simple_0", "question": [[{"content": "x"}]], "function": []},
            None,
            "needs 'role' and 'content'",
        ),
        (
            {"id": "simple_0", "question": "x", "function": [{"name": "f", "parameters": 3}]},
            None,
            "'parameters'",
        ),
        (
            {"id": "simple_0", "question": "x", "function": []},
            {"id": "simple_0", "ground_truth": [{"f": {"a": 1}}]},
            "'a' must be a list of acceptable values",
        ),
        (
            {"id": "simple_0", "question": "x", "function": []},
            {"id": "simple_0", "ground_truth": [["f(a=1)"]]},
            "multi-turn categories are not supported",
        ),
    ],
)
def test_bfcl_bad_input(tmp_path: Path, question: dict, answer: dict | None, message: str) -> None:
    q = tmp_path / "q.json"
    q.write_text(json.dumps(question) + "\n")
    a = tmp_path / "a.json"
    a.write_text(json.dumps(answer or {"id": "other_0", "ground_truth": []}) + "\n")
    with pytest.raises(DatasetError) as info:
        load_dataset(f"bfcl:{q}", answers=str(a))
    assert "line 1" in str(info.value)
    assert message in str(info.value)


# ---------------------------------------------------------------- OpenAI JSON Lines and countdown


def test_openai_plain_and_bfcl_shaped_expected_calls() -> None:
    items = load_dataset(f"openai:{OPENAI}")
    assert [i.id for i in items] == ["o1", "o2", "2", "o4"]
    assert items[0].expected == [{"get_weather": {"city": ["Rome"]}}]
    assert items[1].expected == [
        {"set_timer": {"minutes": [5]}},
        {"get_weather": {"city": ["Kyiv", "Kiev"], "unit": ["f"]}},
    ]
    assert items[2].expected == []
    assert items[3].expected == [{"set_timer": {"minutes": [3]}}]
    assert [t.name for t in items[1].tools] == ["get_weather", "set_timer"]
    assert items[1].messages[0] == {"role": "system", "content": "Be brief."}


def test_openai_requires_expected_calls(tmp_path: Path) -> None:
    f = tmp_path / "o.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "x"}], "tools": []}) + "\n")
    with pytest.raises(DatasetError, match=r"line 1: missing 'expected_tool_calls'"):
        load_dataset(f"openai:{f}")


def test_countdown_items() -> None:
    items = load_dataset(f"countdown:{COUNTDOWN}")
    assert [i.id for i in items] == ["0", "1", "2"]
    item = items[0]
    assert item.task == "countdown"
    assert item.expected == []
    assert item.tools == []
    assert item.extra == {"nums": [3, 5, 7], "target": 22}
    (msg,) = item.messages
    assert msg["role"] == "user"
    assert "[3, 5, 7]" in msg["content"] and "22" in msg["content"] and "<answer>" in msg["content"]


def test_countdown_bad_record(tmp_path: Path) -> None:
    f = tmp_path / "c.jsonl"
    f.write_text('{"nums": [1, 2], "target": 3}\n{"nums": "12", "target": 3}\n')
    with pytest.raises(DatasetError, match=r"c\.jsonl, line 2: 'nums' must be"):
        load_dataset(f"countdown:{f}")


# ---------------------------------------------------------------- tools for `rrr tools convert`


def test_convert_tools_dedupes_by_name_and_schema() -> None:
    tools = convert_tools("xlam", XLAM)
    keys = [(t.name, t.schema_hash) for t in tools]
    assert len(keys) == len(set(keys))
    # get_weather appears in three records with three different schemas: all are kept, once each.
    assert [t.name for t in tools].count("get_weather") == 3
    assert all(ToolSpec.from_openai(t.to_openai()) == t for t in tools)
    bfcl = convert_tools("bfcl", BFCL)
    assert "currency_convert" in {t.name for t in bfcl}
    with pytest.raises(DatasetError, match="cannot convert tools from 'countdown'"):
        convert_tools("countdown", COUNTDOWN)
