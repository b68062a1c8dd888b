"""`rrr tools convert`: dataset tools as one OpenAI tools JSON array, deduplicated, round-tripping."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from tools.schema import validate_tool_specs
from tools.spec import ToolSpec

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"
SHARED = Path(os.environ.get("RRR_SHARED_DIR") or Path(__file__).resolve().parents[2] / ".." / "shared")
APIBANK = SHARED / "data" / "apibank"

runner = CliRunner()


def convert(fmt: str, path: Path) -> list[ToolSpec]:
    result = runner.invoke(app, ["tools", "convert", "--from", fmt, str(path)])
    assert result.exit_code == 0, result.stderr
    payload = json.loads(result.stdout)
    assert isinstance(payload, list)
    assert all(entry["type"] == "function" for entry in payload)
    return [ToolSpec.from_openai(entry) for entry in payload]


def test_convert_xlam() -> None:
    tools = convert("xlam", FIXTURES / "xlam_sample.json")
    names = [t.name for t in tools]
    assert names == [
        "get_weather",
        "search_restaurants",
        "get_weather",
        "GetAccount",
        "BookTable",
        "get_weather",
        "search_docs",
    ]
    assert len({(t.name, t.schema_hash) for t in tools}) == len(tools)
    validate_tool_specs([t for t in tools if t.name != "get_weather"])
    restaurants = tools[1].parameters
    assert restaurants["properties"]["limit"]["type"] == ["integer", "null"]
    assert restaurants["required"] == ["cuisine", "location", "tags", "price"]


def test_convert_bfcl_renames_dotted_functions_and_dedupes() -> None:
    tools = convert("bfcl", FIXTURES / "bfcl" / "BFCL_v3_sample.json")
    names = [t.name for t in tools]
    assert "math_factorial" in names and "thermostat_set" in names
    assert all("." not in n for n in names)
    # 16 functions in 12 questions; send_sms and set_timer(minutes) repeat with identical schemas,
    # calculate_triangle_area, get_stock_price and set_timer also come in a second version.
    assert names.count("send_sms") == 1
    assert names.count("set_timer") == 2
    assert names.count("get_stock_price") == 2
    assert len(tools) == 14
    for tool in tools:
        assert tool.parameters["type"] == "object"
        validate_tool_specs([tool])


def test_convert_apibank_dedupes_across_records() -> None:
    path = APIBANK / "apibank_l1.json"
    if not path.is_file():
        pytest.skip(f"API-Bank data not found at {path} (set RRR_SHARED_DIR)")
    tools = convert("xlam", path)
    records = json.loads(path.read_text())
    distinct_names = {t["name"] for r in records for t in r["tools"]}
    assert {t.name for t in tools} == distinct_names
    assert len({(t.name, t.schema_hash) for t in tools}) == len(tools)
    assert len(tools) < sum(len(r["tools"]) for r in records)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--from", "csv", "x.json"], "cannot convert tools from 'csv'"),
        (["--from", "xlam", "absent.json"], "absent.json: no such file"),
        (["--from", "bfcl", str(FIXTURES / "xlam_sample.json")], "not valid JSON"),
    ],
)
def test_convert_errors_are_one_line(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["tools", "convert", *args])
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
