"""`rrr eval run` on real (tiny) models: in-process with --model DIR, and against a real `rrr serve` process.

The tiny tool model memorised a right call for one prompt and a malformed one for another, so the
local run's first attempts are known; the `rrr serve` run checks the whole path on all four formats
(subprocesses, real HTTP, real model output) and that rrr's serving verdicts agree with the scores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli import app
from tests.conftest import ToolModel
from tools.formats import load_dataset

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
DATASETS = {
    "xlam": f"xlam:{FIXTURES / 'xlam_sample.json'}",
    "bfcl": f"bfcl:{FIXTURES / 'bfcl' / 'BFCL_v3_sample.json'}",
    "openai": f"openai:{FIXTURES / 'openai_sample.jsonl'}",
    "countdown": f"countdown:{FIXTURES / 'countdown_sample.jsonl'}",
}


def _items(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines() if line.strip()]


def test_local_model_and_adapter_in_process(tiny_tool_model: ToolModel, tiny_adapter_dir: Path, tmp_path: Path) -> None:
    dataset = tmp_path / "weather.jsonl"
    expected = [{"name": "get_weather", "arguments": {"city": "Paris"}}]
    rows = [
        {
            "id": key,
            "messages": tiny_tool_model.prompt(key),
            "tools": tiny_tool_model.tools,
            "expected_tool_calls": expected,
        }
        for key in ("call", "broken")
    ]
    dataset.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "run",
            "--dataset",
            f"openai:{dataset}",
            "--model",
            str(tiny_tool_model.path),
            "--model-name",
            "tiny",
            "--model-name",
            f"tiny-lora={tiny_adapter_dir}",
            "--max-tokens",
            "64",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.stderr

    summary = json.loads((out / "summary.json").read_text())
    assert [(r["model"], r["n"]) for r in summary["models"]] == [("tiny", 2), ("tiny-lora", 2)]
    assert summary["models"][0]["accuracy"][0]["correct"] == 1  # the memorised call, not the broken one
    records = {(r["model"], r["id"]): r for r in _items(out)}
    call, broken = records[("tiny", "call")], records[("tiny", "broken")]
    assert call["status"] == "first_ok" and call["ok_at"] == [True, True] and len(call["attempts"]) == 1
    assert call["attempts"][0]["tool_calls"] == expected
    first, retry = broken["attempts"]
    assert not first["ok"] and "malformed" in first["reason"]
    assert isinstance(retry["reflection"], str) and retry["number"] == 2  # rrr's loop reflected and retried
    assert {r["adapter"] for (m, _), r in records.items() if m == "tiny-lora"} == {"tiny-lora"}
    assert {r["adapter"] for (m, _), r in records.items() if m == "tiny"} == {None}
    assert (out / "chart.png").read_bytes()[:4] == b"\x89PNG"


@pytest.fixture
def rrr_serve(tiny_tool_model: ToolModel, tmp_path: Path) -> Iterator[str]:
    """`rrr serve --model <tiny model>` as a real process on a free loopback port (auth off)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RRR_")}
    env.update(HF_HUB_OFFLINE="1", RRR_DATA_DIR=str(tmp_path / "data"), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "serve", "--model", str(tiny_tool_model.path), "--port", "0"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        seen = []
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("rrr serving on "):
                yield line.split()[3]
                break
        else:
            pytest.fail("rrr serve did not start:\n" + "".join(seen[-20:]))
    finally:
        proc.terminate()
        proc.wait(60)


def test_all_four_formats_against_rrr_serve(rrr_serve: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RRR_")}
    env["HF_HUB_OFFLINE"] = "1"
    for fmt, dataset in DATASETS.items():
        out = tmp_path / fmt
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "cli",
                "eval",
                "run",
                "--dataset",
                dataset,
                "--base-url",
                rrr_serve,
                "--max-tokens",
                "32",
                "--out",
                str(out),
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"{fmt}: {done.stderr}"
        items = load_dataset(dataset)
        summary = json.loads((out / "summary.json").read_text())
        (row,) = summary["models"]
        assert row["model"] == "rrr" and row["n"] == len(items)
        assert done.stdout.splitlines()[0] == "scorer: reference" and summary["scorer"] == "reference"
        assert done.stdout.splitlines()[2].split()[:2] == ["rrr", str(len(items))]
        records = _items(out)
        assert sorted(r["id"] for r in records) == sorted(i.id for i in items)
        relevance = {i.id for i in items if i.extra.get("relevance")}
        for record in records:
            assert record["episode_id"] and record["status"] in ("first_ok", "retry_ok", "failed")
            assert 1 <= len(record["attempts"]) <= 2
            if record["id"] not in relevance:  # the serving verifier is the reference scorer's twin
                assert [a["served_ok"] for a in record["attempts"]] == [a["ok"] for a in record["attempts"]]
        assert (out / "chart.png").stat().st_size > 2000 and (out / "table.md").is_file()
