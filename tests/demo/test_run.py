"""demo/run.py (`rrr demo run`): the table math, the chart, the servers' lifecycle, the
rejected-candidate path, and one end-to-end run of every stage on a throwaway policy.

The end-to-end run is real all the way: `rrr engine serve` and `rrr serve` as child processes, the
official openai SDK, the API's loop and SQLite store, a GRPO subprocess, the gate, publish and
hot-swap. The policy is a few-thousand-parameter model trained for a handful of steps, so every
task fails; the run's gate is told to promote anything (margin 0) so that the promoted path is
taken, and the numbers are asserted for shape and consistency, not for quality.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from demo.report import compare, difference, format_table, summarize_statuses
from learner.config import GateConfig, TrainConfig

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- the table ----------------------------------------------------------------------------------------


def test_rates_count_first_attempts_and_rescues_separately() -> None:
    statuses = {"a": "first_ok", "b": "retry_ok", "c": "failed", "d": "failed", "e": "error"}
    summary = summarize_statuses(statuses)
    assert summary["n"] == 5 and summary["errors"] == 1
    assert summary["first_attempt"]["successes"] == 1 and summary["first_attempt"]["rate"] == pytest.approx(0.2)
    assert summary["after_retry"]["successes"] == 2
    assert summary["retry_rescued"] == {**summary["retry_rescued"], "successes": 1, "n": 4}
    lo, hi = summary["after_retry"]["ci95"]
    assert 0 < lo < 0.4 < hi < 1


def test_difference_is_paired_on_the_same_tasks() -> None:
    before = {"a": "first_ok", "b": "failed", "c": "retry_ok", "d": "failed"}
    after = {"a": "failed", "b": "first_ok", "c": "first_ok", "d": "retry_ok", "extra": "first_ok"}
    first = difference(before, after, ("first_ok",))
    assert first["n"] == 4 and first["fixed"] == 2 and first["broken"] == 1
    assert first["difference"] == pytest.approx(0.25)
    after_retry = difference(before, after, ("first_ok", "retry_ok"))
    assert after_retry["fixed"] == 2 and after_retry["broken"] == 1
    table = compare(before, after)
    text = format_table(table, "base (demo-policy)", "rrr-v1 (promoted)")
    assert "base (demo-policy)" in text and "rrr-v1 (promoted)" in text
    assert "+25.0 pts" in text and "fixed 2, broke 1" in text


def test_comparison_pairs_the_last_adapter_with_the_base_and_counts_rescues_of_base_failures() -> None:
    from demo.run import comparison

    base = {"a": "first_ok", "b": "failed", "c": "retry_ok", "d": "failed", "e": "failed", "f": "first_ok"}
    last = {"a": "first_ok", "b": "retry_ok", "c": "first_ok", "d": "failed", "e": "retry_ok", "f": "failed"}
    found = comparison(base, last, label="rrr-v2", kind="promoted")
    assert found["first_attempt"] == {**found["first_attempt"], "diff": 0.0, "fixed": 1, "broke": 1, "n": 6}
    assert found["after_retry"]["diff"] == pytest.approx(1 / 6, abs=1e-6) and found["after_retry"]["fixed"] == 2
    lo, hi = found["after_retry"]["ci95"]
    assert lo < 1 / 6 < hi
    rescue = found["rescue_among_base_failures"]  # b, c, d, e failed the base's first attempt
    assert rescue["n"] == 4
    assert (rescue["base"]["successes"], rescue["adapter"]["successes"]) == (1, 3)


def test_chart_is_a_png_with_its_panels(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from demo.chart import write_chart

    table = compare(
        {str(i): "failed" if i % 3 else "first_ok" for i in range(30)},
        {str(i): "retry_ok" if i % 2 else "first_ok" for i in range(30)},
    )
    steps = [{"step": i + 1, "reward_mean": i / 20, "frac_reward_zero_std": 1 - i / 20} for i in range(20)]
    curve = [{"label": "base", "kind": "base", "adapter": None, **table["before"]}]
    curve += [{"label": "rrr-v1", "kind": "promoted", "adapter": "rrr-v1", **table["after"]}]
    with_steps = write_chart(
        tmp_path / "a.png", table, before_label="base", after_label="rrr-v1", steps=steps, curve=curve
    )
    without = write_chart(tmp_path / "b.png", table, before_label="base", after_label="rrr-v1", steps=[])
    for path in (with_steps, without):
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    assert with_steps.read_bytes() != without.read_bytes()  # the reward curve was drawn


def test_out_dir_is_cleaned_only_when_it_is_a_demo_folder(tmp_path: Path) -> None:
    from demo.run import MARKER, DemoError, prepare_out_dir

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DemoError, match="not a demo folder"):
        prepare_out_dir(foreign)
    assert (foreign / "notes.txt").read_text() == "mine"

    out = tmp_path / "demo"
    prepare_out_dir(out)
    for name in ("data", "learner", "policy"):
        (out / name).mkdir()
        (out / name / "x").write_text("old")
    (out / "demo.json").write_text("{}")
    prepare_out_dir(out)
    assert (out / MARKER).is_file()
    assert not (out / "data").exists() and not (out / "learner").exists() and not (out / "demo.json").exists()
    assert (out / "policy" / "x").read_text() == "old"  # the built policy is a cache


def test_demo_config_refuses_a_reflection_budget_that_training_would_not_match() -> None:
    from demo.run import DemoConfig, demo_train_config

    with pytest.raises(ValueError, match="reflection_max_tokens"):
        DemoConfig(reflection_max_tokens=64, train=demo_train_config(10))
    assert DemoConfig().reflection_max_tokens == DemoConfig().train.max_completion_length


# --- servers and the candidate path (real processes, real engine) -----------------------------------------


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A demo policy of a few thousand parameters trained for a few steps (it fails every task)."""
    pytest.importorskip("torch")
    from demo.base_policy import build_policy
    from demo.sft import SFTConfig
    from learner.tiny import TinyModelConfig

    config = SFTConfig(
        seed=3,
        n_train_items=120,
        steps=4,
        batch_size=8,
        group_size=4,
        toolless_steps=2,
        warmup_steps=1,
        eval_items=12,
        eval_every=0,
        tokenizer_texts=120,
        model=TinyModelConfig(
            hidden_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=128,
            vocab_size=600,
            max_position_embeddings=4096,
        ),
    )
    out = tmp_path_factory.mktemp("demo-run") / "policy"
    build_policy(out, config, num_threads=1, progress=False)
    return out


def test_servers_answer_and_are_stopped_when_the_caller_fails(tiny_policy: Path, tmp_path: Path) -> None:
    from demo.servers import demo_servers

    seen: dict[str, Any] = {}
    with (
        pytest.raises(RuntimeError, match="boom"),
        demo_servers(tiny_policy, tmp_path / "data", tmp_path / "logs", startup_timeout_s=120) as servers,
    ):
        seen["servers"] = servers
        assert httpx.get(f"{servers.engine_url}/health").status_code == 200
        models = httpx.get(f"{servers.api_url}/v1/models").json()["data"]
        assert [m["id"] for m in models[:2]] == ["rrr", "demo-policy"]
        raise RuntimeError("boom")
    servers = seen["servers"]
    for proc in (servers.engine, servers.api):
        assert not proc.running
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{servers.api_url}/health", timeout=2)
    assert (tmp_path / "data" / "rrr.db").is_file() and (tmp_path / "logs" / "engine.log").is_file()


def test_a_rejected_candidate_is_served_by_name_then_marked_rejected(
    tiny_model_dir: Path, tiny_adapter_dir: Path, tmp_path: Path
) -> None:
    from demo.run import DemoConfig, retire_candidate, stage_candidate
    from engines.local import LocalEngine
    from store import repos
    from store.db import make_engine, make_session_factory, upgrade

    url = f"sqlite:///{tmp_path / 'rrr.db'}"
    upgrade(url)
    sessions = make_session_factory(make_engine(url))
    engine = LocalEngine(str(tiny_model_dir), served_name="demo-policy", max_lora_rank=16)
    config = DemoConfig(out_dir=tmp_path / "demo")

    async def go() -> tuple[str, list[str], list[str]]:
        name = await stage_candidate(tiny_adapter_dir, config=config, sessions=sessions, engines=engine, run_id=None)
        loaded = [card["id"] for card in await engine.list_models()]
        await retire_candidate(name, ["held-out retry success 1.0% -> 1.0%"], sessions=sessions, engines=engine)
        return name, loaded, [card["id"] for card in await engine.list_models()]

    name, loaded, after = asyncio.run(go())
    assert name == "rrr-v1" and name in loaded and name not in after
    with sessions() as session:
        row = repos.get_adapter(session, name)
        assert row is not None and row.status == "rejected"
        assert "gate: held-out retry success" in (row.metrics or {}).get("rejected_reason", "")
        assert repos.get_active_adapter(session) is None
    assert (tmp_path / "demo" / "data" / "adapters" / "rrr-v1" / "manifest.json").is_file()


# --- every stage, end to end -----------------------------------------------------------------------------


@pytest.mark.slow
def test_the_demo_runs_every_stage_and_tears_down(tiny_policy: Path, tmp_path: Path) -> None:
    from demo.run import DemoConfig, format_result, run_demo

    train = TrainConfig(
        max_steps=2,
        num_generations=2,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        max_completion_length=8,
        retry_max_tokens=16,
        learning_rate=1e-3,
        lora_r=4,
        lora_alpha=8,
        save_steps=2,
        keep_checkpoints=1,
    )
    config = DemoConfig(
        out_dir=tmp_path / "demo",
        policy=tiny_policy,
        n_train=10,
        n_heldout=6,
        concurrency=2,
        max_tokens=16,
        reflection_max_tokens=8,
        train=train,
        heldout_fraction=0.5,
        train_threads=1,
        gate=GateConfig(margin=-1.0, tolerance=1.0, min_items=1, max_tokens=16, concurrency=1),
    )
    seen: dict[str, Any] = {}
    lines: list[str] = []

    def hold(servers: Any, finished: Any) -> None:
        # called with the servers still up and the outputs already written
        seen["s"] = servers
        assert servers.api.running and (config.out_dir / "demo.json").is_file()
        assert httpx.get(f"{servers.api_url}/v1/adapters").json()["data"][0]["status"] == "active"

    result = run_demo(config, say=lines.append, progress=False, hold=hold)

    # every stage ran and was timed: the base measured, then per cycle traffic, learner, held-out
    per_cycle = {f"{stage}_{k}" for stage in ("traffic", "learner", "heldout") for k in (1, 2)}
    assert {"policy", "servers", "heldout_base", "total"} | per_cycle <= set(result.timings)
    assert [(t["n"], t["recorded"], t["errors"]) for t in result.traffic] == [(10, 10, 0), (10, 10, 0)]
    # traffic 2 was served by the adapter cycle 1 promoted; cycle 2 started from it
    assert [t["served_by"] for t in result.traffic] == [{"base": 10}, {"rrr-v1": 10}]
    assert [(c["status"], c["adapter"], c["warm_start_from"]) for c in result.cycles] == [
        ("promoted", "rrr-v1", None),
        ("promoted", "rrr-v2", "rrr-v1"),
    ]
    for cycle in result.cycles:
        gate = cycle["gate"]
        assert gate["promote"] is True and gate["rule"].startswith("promote iff")
        assert set(gate["heldout_retry_gain"]) >= {"difference", "ci95", "fixed", "broken", "n"}
        assert gate["regression_first_difference"]["n"] == cycle["dataset"]["regression"]
    assert [(s["cycle"], s["step"]) for s in result.training_steps] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert "reward_mean" in result.training_steps[0]
    # the base pinned by name, each cycle's adapter through the `rrr` alias right after its promotion
    assert result.served_by == {"base": {"base": 6}, "cycle_1": {"rrr-v1": 6}, "cycle_2": {"rrr-v2": 6}}
    assert [row["kind"] for row in result.curve] == ["base", "promoted", "promoted"]
    assert result.after_kind == "promoted" and result.after_label == "rrr-v2 (promoted, cycle 2)"
    table = result.table
    assert table is not None and table["before"]["n"] == table["after"]["n"] == 6
    assert set(table["difference"]) == {"first_attempt", "after_retry"}
    lo, hi = table["difference"]["after_retry"]["ci95"]
    assert lo <= table["difference"]["after_retry"]["difference"] <= hi
    comparison = result.comparison
    assert comparison is not None and set(comparison) >= {"first_attempt", "after_retry", "rescue_among_base_failures"}
    for metric in ("first_attempt", "after_retry"):
        assert set(comparison[metric]) >= {"diff", "ci95", "fixed", "broke"}
        assert comparison[metric]["diff"] == table["difference"][metric]["difference"]
    rescue = comparison["rescue_among_base_failures"]
    assert rescue["n"] == 6 - table["before"]["first_attempt"]["successes"]

    # held-out requests were evaluation traffic: recorded, and never a training candidate
    import sqlite3

    with sqlite3.connect(config.out_dir / "data" / "rrr.db") as db:
        purposes = dict(db.execute("select task, group_concat(distinct purpose) from episodes group by task"))
    assert purposes == {
        "demo-heldout-base": "eval", "demo-heldout-1": "eval", "demo-heldout-2": "eval",
        "demo-traffic-1": "traffic", "demo-traffic-2": "traffic",
    }  # fmt: skip

    # the files and the inspection snapshots
    out = config.out_dir
    saved = json.loads((out / "demo.json").read_text())
    assert saved["table"] == table and saved["cycles"] == result.cycles and saved["comparison"] == comparison
    assert (out / "demo.png").read_bytes().startswith(PNG_MAGIC)
    assert len(json.loads((out / "heldout.json").read_text())) == 6
    failed = json.loads((out / "inspection" / "failed_episodes.json").read_text())
    assert failed["data"] and {e["status"] for e in failed["data"]} == {"failed"}
    episode = json.loads((out / "inspection" / "episode_with_reflection.json").read_text())
    assert "reflection" in {a["kind"] for a in episode["attempts"]}
    adapters = json.loads((out / "inspection" / "adapters.json").read_text())
    assert {a["name"]: a["status"] for a in adapters["data"]}["rrr-v2"] == "active"
    runs = json.loads((out / "inspection" / "training_run.json").read_text())
    assert runs["status"] == "promoted" and runs["id"] == result.cycles[-1]["run_id"]
    assert set(result.inspection) >= {"failed_episodes", "episode_with_reflection", "adapters", "training_runs"}

    text = format_result(result)
    assert "rrr-v2 (promoted, cycle 2)" in text and "warm-started from rrr-v1" in text
    assert "stage times" in text and str(out / "demo.png") in text

    # both servers are gone
    servers = seen["s"]
    assert not servers.engine.running and not servers.api.running
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{servers.engine_url}/health", timeout=2)


def test_cli_names_the_missing_policy(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli import app

    result = CliRunner().invoke(
        app, ["demo", "run", "--policy", str(tmp_path / "nope"), "--out", str(tmp_path / "demo")]
    )
    assert result.exit_code == 1
    assert "no policy at" in result.output and "rrr demo build-policy" in result.output


def test_cli_tasks_traffic_shares_no_query_with_the_held_out_set_of_the_policys_recipe(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cli import app
    from demo.base_policy import demo_splits
    from demo.corpus import generate_items
    from demo.sft import SFTConfig

    policy = tmp_path / "policy"
    policy.mkdir()
    recipe = SFTConfig(seed=3, n_train_items=400, group_size=4)
    (policy / "sft.json").write_text(json.dumps({"config": recipe.to_json()}), encoding="utf-8")

    def tasks(split: str, n: int) -> list[dict[str, Any]]:
        out = tmp_path / f"{split}.jsonl"
        result = CliRunner().invoke(
            app,
            [
                "demo",
                "tasks",
                "--split",
                split,
                "--n",
                str(n),
                "--heldout",
                "240",
                "--policy",
                str(policy),
                "--out",
                str(out),
            ],
        )
        assert result.exit_code == 0, result.output
        return [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]

    train, heldout = tasks("train", 300), tasks("heldout", 240)
    assert (len(train), len(heldout)) == (300, 240)
    unfiltered = {i.query for i in generate_items(300, seed=10_000, prefix="traffic")}
    assert unfiltered & {r["messages"][0]["content"] for r in heldout}  # the exclusion has work to do here
    assert not {r["messages"][0]["content"] for r in train} & {r["messages"][0]["content"] for r in heldout}
    expected_train, expected_heldout = demo_splits(policy, 300, 240)  # exactly what `rrr demo run` sends
    assert [r["id"] for r in train] == [i.id for i in expected_train]
    assert [r["messages"] for r in heldout] == [i.messages for i in expected_heldout]
    assert all(r["expected_tool_calls"] and r["tools"] for r in train + heldout)
