"""`rrr eval run` against a real rrr (in-process app on a loopback port) in front of a scripted upstream.

The upstream answers each item by plan: right at once, wrong then right after the reflection, or
wrong twice; so the accuracy at attempt 1 and 2 is known exactly for every format (xlam, bfcl,
openai, countdown) and checked against the table, summary.json and items.jsonl. rrr itself runs
the reflect/retry loop (the harness only sends the `rrr` extension), which the upstream's request
log proves, as it proves that countdown reflects with the paper's math prompt.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agent.prompts import MATH_REFLECTION_PROMPT, REFLECTION_PROMPT
from cli import app
from evals import wilson_interval
from store.registry import create_adapter
from tests.api.conftest import INFER, Rrr, running
from tests.support.upstream import Script, classify, text, tool_call
from tests.tools.test_scorers import QUIRKS, expected_verdicts, write_quirks
from tools.formats import DatasetItem, load_dataset
from tools.scorers import SCORERS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
DATASETS = {
    "xlam": f"xlam:{FIXTURES / 'xlam_sample.json'}",
    "bfcl": f"bfcl:{FIXTURES / 'bfcl' / 'BFCL_v3_sample.json'}",
    "openai": f"openai:{FIXTURES / 'openai_sample.jsonl'}",
    "countdown": f"countdown:{FIXTURES / 'countdown_sample.jsonl'}",
}
COUNTDOWN_SOLUTIONS = {"0": "3 * 5 + 7", "1": "2 + 4 + 6 + 8", "2": "10 - 1"}
FIRST_OK, RETRY_OK, FAILED = "first_ok", "retry_ok", "failed"

runner = CliRunner()


class Planner:
    """The upstream's behaviour: per (model, item) a plan; the answers follow from the item."""

    def __init__(self) -> None:
        self.items: dict[str, DatasetItem] = {}
        self.plans: dict[tuple[str, str], str] = {}
        self.log: list[tuple[str, str, str, dict[str, Any]]] = []  # (model, item id, kind, body)

    def use(self, items: list[DatasetItem], plans: dict[tuple[str, str], str]) -> None:
        self.items = {_query(i.messages): i for i in items}
        self.plans = plans
        self.log.clear()

    def __call__(self, body: dict[str, Any]) -> dict[str, Any]:
        item = self.items[_query(body["messages"])]
        kind = classify(body["messages"])
        model = body.get("model", "")
        self.log.append((model, item.id, kind, body))
        if kind == "reflection":
            return text(f"reflection on {item.id}: check every argument against the request.")
        plan = self.plans[(model, item.id)]
        right = plan == FIRST_OK or (plan == RETRY_OK and kind == "retry")
        return right_answer(item) if right else wrong_answer(item)

    def calls(self, kind: str | None = None) -> list[tuple[str, str]]:
        return [(m, i) for m, i, k, _ in self.log if kind is None or k == kind]


def _query(messages: list[dict[str, Any]]) -> str:
    return next(m["content"] for m in messages if m["role"] == "user")


def _message(calls: list[dict[str, Any]]) -> dict[str, Any]:
    messages = [tool_call(c["name"], c["arguments"]) for c in calls]
    return {"role": "assistant", "content": None, "tool_calls": [m["tool_calls"][0] for m in messages]}


def right_answer(item: DatasetItem) -> dict[str, Any]:
    if item.task == "countdown":
        return text(f"Let me think. <answer>{COUNTDOWN_SOLUTIONS[item.id]}</answer>")
    if item.extra.get("relevance"):
        return _message([{"name": item.tools[0].name, "arguments": {"minutes": 5}}])
    if not item.expected:
        return text("No tool fits this request.")
    return _message([c.to_dict() for c in item.reference_calls()])


def wrong_answer(item: DatasetItem) -> dict[str, Any]:
    if item.task == "countdown":
        return text("<answer>1 + 1</answer>")
    if not item.expected:
        return _message([{"name": item.tools[0].name, "arguments": {}}])
    return _message([{"name": item.tools[0].name + "_typo", "arguments": {}}])


def plan_for(items: list[DatasetItem], model: str = "base") -> dict[tuple[str, str], str]:
    """Item i: right at once (i % 3 == 0), right after the reflection (1), wrong twice (2).
    BFCL relevance items (any call is right) are answered right at once."""
    cycle = (FIRST_OK, RETRY_OK, FAILED)
    return {(model, item.id): FIRST_OK if item.extra.get("relevance") else cycle[i % 3] for i, item in enumerate(items)}


@pytest.fixture(scope="module")
def planner() -> Planner:
    return Planner()


@pytest.fixture(scope="module")
def served(planner: Planner, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rrr]:
    """rrr (auth on, base model `base`, adapter `rrr-v1` registered) in front of the planner."""
    with running(tmp_path_factory.mktemp("rrr"), Script(responder=planner), policy_ttl_s=0.0) as rrr:
        with rrr.state.session_factory.begin() as session:
            create_adapter(session, name="rrr-v1", version=1, path="/nowhere/rrr-v1", base_model="base")
        yield rrr


def run_eval(rrr: Rrr, dataset: str, out: Path, *extra: str, key: str = INFER) -> Any:
    return runner.invoke(
        app, ["eval", "run", "--dataset", dataset, "--base-url", rrr.url, "--api-key", key, "--out", str(out), *extra]
    )


def read_items(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "items.jsonl").read_text().splitlines() if line.strip()]


def expected_accuracy(plans: dict[tuple[str, str], str], model: str) -> tuple[int, int, int]:
    mine = [p for (m, _), p in plans.items() if m == model]
    return len(mine), sum(p == FIRST_OK for p in mine), sum(p in (FIRST_OK, RETRY_OK) for p in mine)


# --------------------------------------------------------------------------------- the four formats


@pytest.mark.parametrize("fmt", sorted(DATASETS))
def test_every_format_scores_attempt_1_and_2_exactly(fmt: str, served: Rrr, planner: Planner, tmp_path: Path) -> None:
    items = load_dataset(DATASETS[fmt])
    plans = plan_for(items)
    planner.use(items, plans)
    out = tmp_path / "out"
    result = run_eval(served, DATASETS[fmt], out, "--model-name", "base")
    assert result.exit_code == 0, result.stderr

    n, first, second = expected_accuracy(plans, "base")
    assert 0 < first < second < n  # the plan exercises all three outcomes
    summary = json.loads((out / "summary.json").read_text())
    (row,) = summary["models"]
    assert row["model"] == "base" and row["n"] == n
    assert [(a["correct"], a["total"]) for a in row["accuracy"]] == [(first, n), (second, n)]
    lo, hi = wilson_interval(first, n)
    assert row["accuracy"][0]["ci95"] == [round(lo, 6), round(hi, 6)]
    assert row["statuses"] == {s: c for s in (FIRST_OK, RETRY_OK, FAILED) if (c := sum(p == s for p in plans.values()))}

    # the printed table: one row per model, accuracy at attempt 1 and 2
    table, *failure_tables = result.stdout.strip().split("\n\n")
    caption, header, *rows = table.splitlines()
    assert caption == "scorer: reference" and summary["scorer"] == "reference"
    assert header.split()[:6] == ["model", "n", "attempt", "1", "attempt", "2"]
    (line,) = rows
    assert line.split()[:4] == ["base", str(n), f"{100 * first / n:.1f}%", f"[{100 * lo:.1f},"]
    assert f"{100 * second / n:.1f}%" in line
    # then the failure codes of the first attempts that failed: they add up to n - first
    assert sum(row["first_failures"].values()) == n - first and "unknown" not in row["first_failures"]
    (codes,) = failure_tables
    assert codes.splitlines()[0].startswith("base: first-attempt failures")
    assert sum(int(c.split()[1]) for c in codes.splitlines()[1:]) == n - first

    # one JSON line per item, scored by the reference scorer, agreeing with rrr's own verdicts
    records = {r["id"]: r for r in read_items(out)}
    assert set(records) == {i.id for i in items}
    for item in items:
        record, plan = records[item.id], plans[("base", item.id)]
        assert record["status"] == plan and record["episode_id"]
        assert record["ok_at"] == [plan == FIRST_OK, plan != FAILED]
        attempts = record["attempts"]
        assert len(attempts) == (1 if plan == FIRST_OK else 2)
        assert [a["served_ok"] for a in attempts] == [a["ok"] for a in attempts]
        assert attempts[0]["reflection"] is None
        if len(attempts) == 2:
            assert attempts[1]["reflection"] == f"reflection on {item.id}: check every argument against the request."
            assert attempts[0]["reason"]

    # rrr ran the loop: one request from the harness per item, the reflection and retry came from rrr
    answers, reflections = planner.calls("answer"), planner.calls("reflection")
    assert sorted(i for _, i in answers) == sorted(i.id for i in items)
    assert len(reflections) == len(planner.calls("retry")) == sum(p != FIRST_OK for p in plans.values())
    prompt = MATH_REFLECTION_PROMPT if fmt == "countdown" else REFLECTION_PROMPT
    assert {body["messages"][-1]["content"] for _, _, k, body in planner.log if k == "reflection"} == {prompt}
    if fmt != "countdown":
        first_request = next(body for _, _, k, body in planner.log if k == "answer")
        assert first_request["tools"] and first_request["temperature"] == 0.0

    chart = (out / "chart.png").read_bytes()
    assert chart[:8] == b"\x89PNG\r\n\x1a\n" and len(chart) > 2000
    table = (out / "table.md").read_text()
    assert "| base |" in table and "attempt 2" in table


def test_several_model_names_give_one_row_each(served: Rrr, planner: Planner, tmp_path: Path) -> None:
    items = load_dataset(DATASETS["openai"])
    plans = {**plan_for(items, "base"), **{("rrr-v1", i.id): FIRST_OK for i in items}}
    planner.use(items, plans)
    out = tmp_path / "out"
    result = run_eval(served, DATASETS["openai"], out, "--model-name", "base", "--model-name", "rrr-v1")
    assert result.exit_code == 0, result.stderr

    summary = json.loads((out / "summary.json").read_text())
    assert [r["model"] for r in summary["models"]] == ["base", "rrr-v1"]
    for row in summary["models"]:
        n, first, second = expected_accuracy(plans, row["model"])
        assert [(a["correct"], a["total"]) for a in row["accuracy"]] == [(first, n), (second, n)]
    assert summary["models"][1]["adapters"] == ["rrr-v1"] and summary["models"][0]["adapters"] == []
    assert {m for m, _ in planner.calls("answer")} == {"base", "rrr-v1"}  # each name reached the engine
    rows = result.stdout.strip().split("\n\n")[0].splitlines()[2:]
    assert [r.split()[0] for r in rows] == ["base", "rrr-v1"]
    assert rows[1].split()[2] == "100.0%" and rows[1].split()[-2:] == ["+0.0", "pts"]
    assert len(read_items(out)) == 2 * len(items)


def test_rerun_with_the_same_out_skips_done_items_and_survives_a_torn_line(
    served: Rrr, planner: Planner, tmp_path: Path
) -> None:
    items = load_dataset(DATASETS["xlam"])
    plans = plan_for(items)
    planner.use(items, plans)
    out = tmp_path / "out"
    assert run_eval(served, DATASETS["xlam"], out, "--model-name", "base", "--limit", "2").exit_code == 0
    assert sorted(i for _, i in planner.calls("answer")) == sorted(i.id for i in items[:2])
    assert sorted(r["id"] for r in read_items(out)) == sorted(i.id for i in items[:2])

    planner.log.clear()
    full = run_eval(served, DATASETS["xlam"], out, "--model-name", "base")
    assert full.exit_code == 0, full.stderr
    assert sorted(i for _, i in planner.calls("answer")) == sorted(i.id for i in items[2:])  # only the rest
    first_summary = json.loads((out / "summary.json").read_text())
    assert first_summary["models"][0]["n"] == len(items)

    # a crash mid-write: the last line is cut in half; only that item runs again
    lines = (out / "items.jsonl").read_text().splitlines(keepends=True)
    torn_id = json.loads(lines[-1])["id"]
    (out / "items.jsonl").write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    planner.log.clear()
    again = run_eval(served, DATASETS["xlam"], out, "--model-name", "base")
    assert again.exit_code == 0, again.stderr
    assert planner.calls("answer") == [("base", torn_id)]
    records = read_items(out)
    assert sorted(r["id"] for r in records) == sorted(i.id for i in items)  # no duplicate, nothing lost
    assert json.loads((out / "summary.json").read_text())["models"] == first_summary["models"]

    planner.log.clear()
    done = run_eval(served, DATASETS["xlam"], out, "--model-name", "base")
    assert done.exit_code == 0 and planner.log == []
    assert done.stdout == again.stdout


# ------------------------------------------------------------------------------------ expected failures


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no target", "nothing to evaluate: give --base-url URL"),
        ("both targets", "give either --base-url URL"),
        ("bad format", "unknown dataset format 'yaml'"),
        ("missing dataset", "no such file"),
        ("bfcl without answers", "no reference answers"),
        ("zero attempts", "--attempts must be between 1 and 8"),
        ("zero limit", "--limit must be at least 1"),
        ("adapter dir with base url", "NAME=ADAPTER_DIR needs --model DIR"),
        ("missing model dir", "no such model directory"),
        ("unreachable", "cannot reach rrr at http://127.0.0.1:"),
        ("wrong key", "refused the API key (401)"),
        ("unknown model", "does not serve 'nope'"),
        ("not rrr", "does not look like `rrr serve`"),
        ("other run in out", "holds results of another evaluation (attempts 2, now 1)"),
        ("retry budget above the server's", "refused the retry budget: rrr.max_retries must be an integer from 0 to 1"),
    ],
)
# Complexity: one branch per failure case.
def test_expected_failures_are_one_line(case: str, message: str, served: Rrr, planner: Planner, tmp_path: Path) -> None:  # noqa: C901
    items = load_dataset(DATASETS["openai"])
    planner.use(items, plan_for(items))
    dataset, target = DATASETS["openai"], ["--base-url", served.url, "--api-key", INFER]
    extra: list[str] = []
    if case == "no target":
        target = []
    elif case == "both targets":
        target += ["--model", str(tmp_path)]
    elif case == "bad format":
        dataset = f"yaml:{FIXTURES / 'openai_sample.jsonl'}"
    elif case == "missing dataset":
        dataset = f"openai:{tmp_path / 'absent.jsonl'}"
    elif case == "bfcl without answers":
        lone = tmp_path / "BFCL_v3_sample.json"
        lone.write_text((FIXTURES / "bfcl" / "BFCL_v3_sample.json").read_text())
        dataset = f"bfcl:{lone}"
    elif case == "zero attempts":
        extra = ["--attempts", "0"]
    elif case == "zero limit":
        extra = ["--limit", "0"]
    elif case == "adapter dir with base url":
        extra = ["--model-name", f"mine={tmp_path}"]
    elif case == "missing model dir":
        target = ["--model", str(tmp_path / "no-model")]
    elif case == "unreachable":
        target = ["--base-url", f"http://127.0.0.1:{_closed_port()}", "--api-key", INFER]
    elif case == "wrong key":
        target = ["--base-url", served.url, "--api-key", "sk-wrong-key-0000000000000000"]
    elif case == "unknown model":
        extra = ["--model-name", "nope"]
    elif case == "not rrr":
        target = ["--base-url", served.upstream.url.removesuffix("/v1")]
    elif case == "retry budget above the server's":
        extra = ["--attempts", "3"]
    elif case == "other run in out":
        ok = runner.invoke(
            app, ["eval", "run", "--dataset", dataset, *target, "--out", str(tmp_path / "out"), "--limit", "1"]
        )
        assert ok.exit_code == 0, ok.stderr
        extra = ["--attempts", "1"]
    result = runner.invoke(app, ["eval", "run", "--dataset", dataset, *target, "--out", str(tmp_path / "out"), *extra])
    assert result.exit_code == 1, result.stdout
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def test_items_the_engine_fails_are_reported_and_retried_on_the_next_run(
    served: Rrr, planner: Planner, tmp_path: Path
) -> None:
    items = load_dataset(DATASETS["openai"])
    plans = plan_for(items)
    planner.use(items, plans)
    broken = items[1]
    original = planner.__call__

    def flaky(body: dict[str, Any]) -> Any:
        if _query(body["messages"]) == _query(broken.messages):
            return "error:500:scripted engine failure"
        return original(body)

    served.upstream.script = Script(responder=flaky)
    try:
        out = tmp_path / "out"
        failed = run_eval(served, DATASETS["openai"], out, "--model-name", "base")
    finally:
        served.upstream.script = Script(responder=planner)
    assert failed.exit_code == 1
    assert (
        failed.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: 1 item(s) could not be evaluated (first: item {broken.id} on base:")
    )
    assert failed.stdout.splitlines()[2].split()[1] == f"{len(items) - 1}/{len(items)}"  # n shows the gap
    assert broken.id not in {r["id"] for r in read_items(out)}

    planner.log.clear()
    fixed = run_eval(served, DATASETS["openai"], out, "--model-name", "base")
    assert fixed.exit_code == 0, fixed.stderr
    assert planner.calls("answer") == [("base", broken.id)]
    n, first, second = expected_accuracy(plans, "base")
    row = json.loads((out / "summary.json").read_text())["models"][0]
    assert [(a["correct"], a["total"]) for a in row["accuracy"]] == [(first, n), (second, n)]


# --------------------------------------------------------------------------------- the scorer


def _quirk_answer(body: dict[str, Any]) -> dict[str, Any]:
    """The quirk dataset's prediction for the item the request asks (its user message is its id)."""
    item_id = _query(body["messages"])
    _, function, _, calls, _ = next(case for case in QUIRKS if case[0] == item_id)
    if isinstance(calls, str):  # arguments that do not decode
        return tool_call(function["name"].replace(".", "_"), calls)
    return _message([{"name": name, "arguments": arguments} for name, arguments in calls])


def test_the_scorer_is_chosen_kept_for_a_resumed_run_and_shown(served: Rrr, planner: Planner, tmp_path: Path) -> None:
    spec, _ = write_quirks(tmp_path / "data")
    served.upstream.script = Script(responder=_quirk_answer)
    try:
        correct = {}
        for scorer in SCORERS:
            out = tmp_path / scorer
            result = run_eval(served, spec, out, "--attempts", "1", "--scorer", scorer)
            assert result.exit_code == 0, result.stderr
            assert result.stdout.splitlines()[0] == f"scorer: {scorer}"
            summary = json.loads((out / "summary.json").read_text())
            assert summary["scorer"] == scorer and json.loads((out / "run.json").read_text())["scorer"] == scorer
            records = {r["id"]: r["attempts"][0]["ok"] for r in read_items(out)}
            assert records == expected_verdicts(scorer)
            correct[scorer] = summary["models"][0]["accuracy"][0]["correct"]
        assert correct == {"reference": 10, "bfcl": 11, "exact": 9}
        assert f"`{SCORERS[1]}` scorer" in (tmp_path / "bfcl" / "table.md").read_text()

        # a rerun without --scorer keeps the folder's; another scorer is refused
        again = run_eval(served, spec, tmp_path / "bfcl", "--attempts", "1")
        assert again.exit_code == 0, again.stderr
        assert again.stdout.splitlines()[0] == "scorer: bfcl"
        other = run_eval(served, spec, tmp_path / "bfcl", "--attempts", "1", "--scorer", "exact")
        assert other.exit_code == 1 and other.stdout == ""
        assert "holds results of another evaluation (scorer 'bfcl', now 'exact')" in other.stderr
        bad = run_eval(served, spec, tmp_path / "bad", "--attempts", "1", "--scorer", "ast")
        assert bad.exit_code == 1 and "unknown scorer 'ast'" in bad.stderr
    finally:
        served.upstream.script = Script(responder=planner)


# --------------------------------------------------------------------------------- no leak into training


def _trainable_ids(rrr: Rrr, ids: set[str]) -> tuple[set[str], set[str], dict[str, str]]:
    """Of `ids`: the episodes the learner could train on, those it could re-check as past successes,
    and each episode's stored purpose."""
    from learner.dataset import _success_candidates, failure_candidates
    from store.models import Episode

    rrr.flush()
    with rrr.state.session_factory() as session:
        failures = {c.id for c in failure_candidates(session, exclude_consumed=False)} & ids
        successes = {c.id for c in _success_candidates(session)} & ids
        purposes = {e.id: e.purpose for e in session.query(Episode).filter(Episode.id.in_(ids))}
    return failures, successes, purposes


def test_evaluation_traffic_never_enters_a_training_set(served: Rrr, planner: Planner, tmp_path: Path) -> None:
    items = load_dataset(DATASETS["xlam"])
    plans = plan_for(items)
    planner.use(items, plans)
    result = run_eval(served, DATASETS["xlam"], tmp_path / "eval", "--model-name", "base")
    assert result.exit_code == 0, result.stderr
    ids = {r["episode_id"] for r in read_items(tmp_path / "eval")}
    assert len(ids) == len(items) and any(p != FIRST_OK for p in plans.values())
    failures, successes, purposes = _trainable_ids(served, ids)
    assert (failures, successes) == (set(), set())  # 0 of its episodes can train or gate
    assert set(purposes.values()) == {"eval"} and set(purposes) == ids
    with served.state.session_factory() as session:
        from store.models import Episode

        assert not any(e.trainable for e in session.query(Episode).filter(Episode.id.in_(ids)))
    # Late feedback with the right answer does not make an evaluation episode trainable either.
    some = sorted(ids)[0]
    served.http().post(
        f"/v1/episodes/{some}/feedback", json={"ok": False, "expected_tool_calls": [{"name": "x", "arguments": {}}]}
    )
    assert _trainable_ids(served, {some})[0] == set()

    # The opt-out: the same items sent with --trainable are training data (failures) and regression items.
    trained = run_eval(served, DATASETS["xlam"], tmp_path / "trainable", "--model-name", "base", "--trainable")
    assert trained.exit_code == 0, trained.stderr
    ids = {r["episode_id"] for r in read_items(tmp_path / "trainable")}
    failures, successes, purposes = _trainable_ids(served, ids)
    assert len(failures) == sum(p != FIRST_OK for p in plans.values()) and failures
    assert len(successes) == sum(p == FIRST_OK for p in plans.values())
    assert set(purposes.values()) == {"traffic"}
