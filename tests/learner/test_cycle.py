"""learner/cycle.py: one cycle end to end on a real store, real engines (the tiny tool model in
`LocalEngine`s) and the real gate; training is a stand-in function that hands back a real LoRA,
except in the one slow test that runs `launch_training` for real.

The stored failures ask the tiny tool model's "broken" prompt (it answers with a malformed call, so
the base fails it); the stored successes ask its "call" prompt (answered correctly by the base,
broken by the noisy candidate LoRA), which makes the gate's regression numbers known.
"""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from engines.pool import EnginePool
from learner.config import GateConfig, LearnerConfig
from learner.cycle import CycleEvent, CycleResult, count_new_failures, run_cycle
from store import repos
from store.models import Episode, TrainingRun
from store.records import AttemptRecord, EpisodeRecord
from tests.conftest import ToolModel

pytest.importorskip("torch")
pytest.importorskip("peft")
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

Factory = Callable[[], Session]
EXPECTED = [{"get_weather": {"city": ["Paris"]}}]


def balanced_ids(n: int, *, seed: int = 0, fraction: float = 0.5) -> list[str]:
    """Random episode ids of which exactly n // 2 fall on the held-out side of the split.

    The split hashes the id, so plain random ids leave the held-out side empty now and then
    (1 time in 64 for six episodes), and the gate rightly refuses to judge on nothing.
    """
    from learner.dataset import _hash_unit

    want_heldout, ids, heldout = n // 2, [], 0
    while len(ids) < n:
        candidate = str(uuid.uuid4())
        side = _hash_unit(seed, candidate) < fraction
        if side and heldout < want_heldout:
            heldout += 1
            ids.append(candidate)
        elif not side and len(ids) - heldout < n - want_heldout:
            ids.append(candidate)
    return ids


def add_episodes(
    session_factory: Factory,
    tool_model: ToolModel,
    n: int,
    *,
    ok: bool = False,
    client: str | None = None,
    adapter: str | None = None,
) -> list[str]:
    key = "call" if ok else "broken"
    ids = balanced_ids(n)
    records = [
        EpisodeRecord(
            id=ids[i],
            status="first_ok" if ok else "failed",
            messages=tool_model.prompt(key),
            tools=tool_model.tools,
            tool_choice="auto",
            verifier={"type": "reference"},
            expected_calls=EXPECTED,
            client_key_id=client,
            adapter=adapter,
            trainable=not ok,
            attempts=[
                AttemptRecord(
                    kind="answer", text=tool_model.answers[key], ok=ok, reason=None if ok else "malformed tool call"
                )
            ],
        )
        for i in range(n)
    ]
    with session_factory() as s, s.begin():
        repos.record_episodes(s, records)
    return [r.id for r in records]


class StandInTrainer:
    """Checks the rows the cycle wrote, then hands back a copy of a real LoRA (no GRPO here)."""

    def __init__(self, adapter: Path, *, delay_s: float = 0.0, error: Exception | None = None) -> None:
        self.adapter = adapter
        self.delay_s = delay_s
        self.error = error
        self.calls: list[dict[str, Any]] = []

    def __call__(
        self,
        run_id: str,
        database_url: str,
        model_path: str,
        work_dir: Path,
        config: Any,
        *,
        init_adapter: str | None = None,
    ) -> Any:
        import time

        from learner.rows import read_rows
        from learner.train import TrainResult

        rows = read_rows(Path(work_dir) / "train.jsonl")
        self.calls.append(
            {
                "run_id": run_id,
                "rows": len(rows),
                "config": config,
                "init_adapter": init_adapter,
                "episode_ids": [r["episode_id"] for r in rows],
            }
        )
        time.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        out = Path(work_dir) / "adapter"
        shutil.copytree(self.adapter, out)
        return TrainResult(adapter_dir=out, steps=1)


def make_config(tmp_path: Path, database_url: str, model: Path, **kw: Any) -> LearnerConfig:
    values: dict[str, Any] = dict(
        adapters_root=str(tmp_path / "adapters"),
        model_path=str(model),
        engine_urls=[],
        database_url=database_url,
        work_dir=str(tmp_path / "work"),
        base_model_name="tiny",
        min_new_failures=4,
        lease_ttl_s=30,
        drain_s=0.0,
        max_client_share=1.0,
        heldout_fraction=0.5,
        seed=0,
        gate=GateConfig(margin=-1.0, tolerance=1.0, min_items=1, max_tokens=40),
    )
    values.update(kw)
    from agent.loop import LoopConfig

    values.setdefault("gate_loop", LoopConfig(reflection_max_tokens=8))
    return LearnerConfig(**values)


def cycle(
    config: LearnerConfig, session_factory: Factory, serving: Any, evaluator: Any, trainer: Any, **kw: Any
) -> CycleResult:
    result: CycleResult = asyncio.run(
        run_cycle(
            config,
            session_factory=session_factory,
            engines=EnginePool([serving]),
            eval_engine=evaluator,
            trainer=trainer,
            **kw,
        )
    )
    return result


def run_row(session_factory: Factory, run_id: str | None) -> TrainingRun:
    assert run_id is not None
    with session_factory() as s:
        run = repos.get_training_run(s, run_id)
        assert run is not None
        return run


def test_skips_below_k_and_returns_busy_when_another_learner_holds_the_lease(
    tmp_path: Path,
    database_url: str,
    session_factory: Factory,
    tiny_tool_model: ToolModel,
    tiny_adapter_dir: Path,
    serving: Any,
    evaluator: Any,
) -> None:
    config = make_config(tmp_path, database_url, tiny_tool_model.path)
    trainer = StandInTrainer(tiny_adapter_dir)
    add_episodes(session_factory, tiny_tool_model, 3)
    add_episodes(session_factory, tiny_tool_model, 5, ok=True)  # successes do not count
    events: list[CycleEvent] = []
    result = cycle(config, session_factory, serving, evaluator, trainer, on_event=events.append)
    assert (result.status, result.new_failures, result.run_id) == ("skipped", 3, None)
    assert [e.stage for e in events] == ["skipped"] and "training starts at 4" in events[0].message
    with session_factory() as s, s.begin():
        assert repos.acquire_lease(s, "learner", "someone-else", 60)
    add_episodes(session_factory, tiny_tool_model, 3)
    assert cycle(config, session_factory, serving, evaluator, trainer).status == "busy"
    with session_factory() as s:
        assert repos.list_training_runs(s) == []
    assert trainer.calls == []


def test_a_lease_left_by_a_dead_learner_on_this_host_is_taken_over_before_its_ttl(
    tmp_path: Path,
    database_url: str,
    session_factory: Factory,
    tiny_tool_model: ToolModel,
    tiny_adapter_dir: Path,
    serving: Any,
    evaluator: Any,
) -> None:
    import socket
    import subprocess
    import sys

    config = make_config(tmp_path, database_url, tiny_tool_model.path)
    trainer = StandInTrainer(tiny_adapter_dir)
    add_episodes(session_factory, tiny_tool_model, 6)
    host = socket.gethostname()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # A live learner process of this host holds it: busy, as for any holder.
        with session_factory() as s, s.begin():
            assert repos.acquire_lease(s, "learner", f"{host}:{alive.pid}:live", 300)
        assert cycle(config, session_factory, serving, evaluator, trainer).status == "busy"
        with session_factory() as s, s.begin():
            assert repos.release_lease(s, "learner", f"{host}:{alive.pid}:live")
    finally:
        alive.kill()
        alive.wait()
    # That process is gone (kill -9): its lease, 300 s from expiring, no longer blocks the next cycle.
    dead = f"{host}:{alive.pid}:gone"
    with session_factory() as s, s.begin():
        assert repos.acquire_lease(s, "learner", dead, 300)
    events: list[CycleEvent] = []
    result = cycle(config, session_factory, serving, evaluator, trainer, on_event=events.append)
    assert result.status != "busy" and result.run_id is not None and len(trainer.calls) == 1
    assert any("no longer running" in e.message for e in events)
    # A holder on another host cannot be checked from here: its heartbeats decide. While it beats: busy.
    with session_factory() as s, s.begin():
        assert repos.acquire_lease(s, "learner", f"not-{host}:{alive.pid}:x", 300)
    add_episodes(session_factory, tiny_tool_model, 6)
    assert cycle(config, session_factory, serving, evaluator, trainer).status == "busy"
    # Silent for longer than lease_stale_s (60 s), 240 s before its expiry: taken over.
    from datetime import timedelta

    from store.records import utcnow

    with session_factory() as s, s.begin():
        repos.release_lease(s, "learner", f"not-{host}:{alive.pid}:x")
        assert repos.acquire_lease(s, "learner", f"not-{host}:{alive.pid}:x", 300, now=utcnow() - timedelta(seconds=61))
    events.clear()
    result = cycle(config, session_factory, serving, evaluator, trainer, on_event=events.append)
    assert result.status != "busy" and len(trainer.calls) == 2
    assert any("sent no heartbeat for 61 s" in e.message for e in events), [e.message for e in events]


def test_a_promoted_cycle_publishes_consumes_the_batch_and_releases_the_lease(
    tmp_path: Path,
    database_url: str,
    session_factory: Factory,
    tiny_tool_model: ToolModel,
    tiny_adapter_dir: Path,
    serving: Any,
    evaluator: Any,
) -> None:
    config = make_config(tmp_path, database_url, tiny_tool_model.path)
    trainer = StandInTrainer(tiny_adapter_dir)
    failures = add_episodes(session_factory, tiny_tool_model, 8)
    add_episodes(session_factory, tiny_tool_model, 3, ok=True)
    events: list[CycleEvent] = []
    result = cycle(config, session_factory, serving, evaluator, trainer, on_event=events.append)
    assert result.status == "promoted", result
    # Typed progress: every stage once, in order, timed, naming the run (the demo's timings read these).
    assert [e.stage for e in events] == ["dataset", "dataset", "train", "gate", "gate_done", "publish", "promoted"]
    assert [e.at for e in events] == sorted(e.at for e in events)
    assert {e.run_id for e in events} == {result.run_id}
    assert result.adapter == "rrr-v1" and result.dataset is not None
    assert result.dataset["train"] + result.dataset["heldout"] == 8 and result.dataset["regression"] == 3
    assert trainer.calls[0]["rows"] == result.dataset["train"]
    run = run_row(session_factory, result.run_id)
    assert run.status == "promoted" and run.adapter_name == "rrr-v1" and run.dataset_size == result.dataset["train"]
    assert run.gate_result is not None and run.gate_result["promote"] is True
    assert run.gate_result["incumbent"]["policy"] == "base"
    assert run.config is not None and "database_url" not in run.config
    with session_factory() as s:
        active = repos.get_active_adapter(s)
        assert active is not None and active.name == "rrr-v1" and active.run_id == run.id
        assert active.metrics is not None and "gate" in active.metrics
        consumed = {e.id: e.consumed_by_run for e in s.query(Episode).filter(Episode.id.in_(failures))}
        assert set(consumed.values()) == {run.id}
        assert count_new_failures(s) == 0
        assert repos.get_lease(s, "learner") is None
    assert [c["id"] for c in asyncio.run(serving.list_models())][1:] == ["rrr-v1"]
    assert (Path(config.adapters_root) / "rrr-v1" / "manifest.json").is_file()
    # The next tick finds nothing new.
    assert cycle(config, session_factory, serving, evaluator, trainer).status == "skipped"


def test_a_gate_rejection_is_stored_with_reasons_and_the_batch_is_not_retrained_until_k_more(
    tmp_path: Path,
    database_url: str,
    session_factory: Factory,
    tiny_tool_model: ToolModel,
    tiny_adapter_dir: Path,
    serving: Any,
    evaluator: Any,
) -> None:
    config = make_config(
        tmp_path,
        database_url,
        tiny_tool_model.path,
        gate=GateConfig(margin=0.5, tolerance=0.0, min_items=1, max_tokens=40),
    )
    trainer = StandInTrainer(tiny_adapter_dir)
    failures = add_episodes(session_factory, tiny_tool_model, 8)
    add_episodes(session_factory, tiny_tool_model, 2, ok=True)
    result = cycle(config, session_factory, serving, evaluator, trainer)
    assert result.status == "rejected", result
    run = run_row(session_factory, result.run_id)
    assert run.status == "rejected" and run.adapter_name is None
    gate = run.gate_result
    assert gate is not None and gate["promote"] is False
    assert any("not above the margin of +50.0" in r for r in gate["reasons"]), gate["reasons"]
    assert any(r.startswith("regression first-attempt difference") for r in gate["reasons"])
    assert gate["incumbent"]["regression_first"]["total"] == gate["candidate"]["regression_first"]["total"] == 2
    assert gate["candidate"]["heldout_retry"]["total"] == result.dataset["heldout"]  # type: ignore[index]
    assert run.error is not None and run.error.startswith("gate: ") and "margin" in run.error
    with session_factory() as s:
        assert repos.get_active_adapter(s) is None and repos.list_adapters(s) == []
        assert {e.consumed_by_run for e in s.query(Episode).filter(Episode.id.in_(failures))} == {None}
    assert asyncio.run(serving.list_models())[1:] == []  # a rejected candidate never reaches serving
    # The rejected batch waits for K new failures before the next run.
    assert cycle(config, session_factory, serving, evaluator, trainer).status == "skipped"
    add_episodes(session_factory, tiny_tool_model, 4)
    again = cycle(config, session_factory, serving, evaluator, trainer)
    assert again.status == "rejected" and again.new_failures == 4
    assert trainer.calls[-1]["rows"] == again.dataset["train"]  # type: ignore[index]


def test_a_failure_at_any_step_is_stored_on_the_run_and_never_raised(
    tmp_path: Path,
    database_url: str,
    session_factory: Factory,
    tiny_tool_model: ToolModel,
    tiny_adapter_dir: Path,
    serving: Any,
    evaluator: Any,
) -> None:
    from learner.train import TrainingFailed

    config = make_config(tmp_path, database_url, tiny_tool_model.path)
    add_episodes(session_factory, tiny_tool_model, 6)
    result = cycle(
        config,
        session_factory,
        serving,
        evaluator,
        StandInTrainer(tiny_adapter_dir, error=TrainingFailed("CUDA out of memory")),
    )
    assert result.status == "failed" and "CUDA out of memory" in (result.error or "")
    run = run_row(session_factory, result.run_id)
    assert run.status == "failed" and run.error == "TrainingFailed: CUDA out of memory"
    with session_factory() as s:
        assert repos.get_lease(s, "learner") is None

    pickles = tmp_path / "pickles"
    shutil.copytree(tiny_adapter_dir, pickles)
    (pickles / "adapter_model.bin").write_bytes(b"\x80\x04")
    result = cycle(config, session_factory, serving, evaluator, StandInTrainer(pickles))
    assert result.status == "failed" and "only safetensors" in (result.error or "")
    assert run_row(session_factory, result.run_id).status == "failed"

    # A candidate the engines cannot serve (rank above their limit) is a rejection, not a crash.
    from learner.tiny import save_tiny_lora

    big = save_tiny_lora(tiny_tool_model.path, tmp_path / "r32", seed=3, r=32)
    result = cycle(config, session_factory, serving, evaluator, StandInTrainer(big))
    assert result.status == "rejected"
    assert any("cannot be loaded" in r and "max_lora_rank 16" in r for r in result.reasons)
    with session_factory() as s:
        assert repos.get_active_adapter(s) is None


@pytest.mark.slow
def test_a_real_training_run_trains_gates_and_publishes(
    tmp_path: Path,
    database_url: str,
    session_factory: Factory,
    tiny_tool_model: ToolModel,
    serving: Any,
    evaluator: Any,
) -> None:
    """`launch_training` for real (GRPO in a subprocess, two steps) feeding the gate and the publisher."""
    from learner.config import TrainConfig

    train = TrainConfig(
        max_steps=2,
        num_generations=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        max_completion_length=8,
        retry_max_tokens=40,
        learning_rate=1e-3,
        lora_r=8,
        lora_alpha=16,
        save_steps=1,
    )
    config = make_config(tmp_path, database_url, tiny_tool_model.path, train=train)
    add_episodes(session_factory, tiny_tool_model, 6)
    add_episodes(session_factory, tiny_tool_model, 2, ok=True)
    steps: list[dict[str, Any]] = []
    result = asyncio.run(
        run_cycle(
            config,
            session_factory=session_factory,
            engines=EnginePool([serving]),
            eval_engine=evaluator,
            on_step=steps.append,
        )
    )
    assert result.status == "promoted", result
    run = run_row(session_factory, result.run_id)
    assert run.metrics is not None and [m["step"] for m in run.metrics] == [1, 2]
    assert [m["step"] for m in steps] == [1, 2]
    assert (Path(config.adapters_root) / "rrr-v1" / "adapter_model.safetensors").is_file()


def test_rrr_learn_run_cli_reports_the_cycle(
    tmp_path: Path,
    database_url: str,
    session_factory: Factory,
    tiny_tool_model: ToolModel,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json

    from typer.testing import CliRunner

    from cli import app
    from tests.support.upstream import Script, ScriptedUpstream

    for name in ("RRR_ENGINE_URLS", "RRR_MODEL", "RRR_ADAPTERS_ROOT"):
        monkeypatch.delenv(name, raising=False)
    add_episodes(session_factory, tiny_tool_model, 2)
    runner = CliRunner()
    base = [
        "learn",
        "run",
        "--database-url",
        database_url,
        "--work-dir",
        str(tmp_path / "work"),
        "--adapters-root",
        str(tmp_path / "adapters"),
    ]
    with ScriptedUpstream(Script()) as up:
        result = runner.invoke(
            app, [*base, "--engine-url", up.url, "--model", str(tiny_tool_model.path), "--min-failures", "3", "--json"]
        )
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout.strip().splitlines()[-1])["status"] == "skipped"
        assert json.loads(result.stdout.strip().splitlines()[-1])["new_failures"] == 2
        no_model = runner.invoke(app, [*base, "--engine-url", up.url])
        assert no_model.exit_code == 1 and "no base model" in no_model.output
    no_engine = runner.invoke(app, [*base, "--model", str(tiny_tool_model.path)])
    assert no_engine.exit_code == 1 and "no serving engine" in no_engine.output
    bad = runner.invoke(app, [*base, "--model", "m", "--engine-url", "http://127.0.0.1:9", "--gate-margin", "3"])
    assert bad.exit_code == 1 and "gate margin" in bad.output


def test_regression_limit_caps_the_gate_and_each_gate_episode_is_reported(
    tmp_path: Path,
    database_url: str,
    session_factory: Factory,
    tiny_tool_model: ToolModel,
    tiny_adapter_dir: Path,
    serving: Any,
    evaluator: Any,
) -> None:
    config = make_config(tmp_path, database_url, tiny_tool_model.path, regression_limit=2)
    add_episodes(session_factory, tiny_tool_model, 6)
    add_episodes(session_factory, tiny_tool_model, 5, ok=True)
    seen: list[int] = []
    result = cycle(
        config,
        session_factory,
        serving,
        evaluator,
        StandInTrainer(tiny_adapter_dir),
        on_gate_item=lambda: seen.append(1),
    )
    assert result.dataset is not None and result.dataset["regression"] == 2
    gate = run_row(session_factory, result.run_id).gate_result
    assert gate is not None and gate["candidate"]["regression_first"]["total"] == 2
    # candidate and incumbent each answer every held-out and regression item once
    assert len(seen) == 2 * (result.dataset["heldout"] + 2)
    with pytest.raises(ValueError, match="regression_limit"):
        make_config(tmp_path, database_url, tiny_tool_model.path, regression_limit=-1)


def test_cycles_compound_from_the_adapter_in_service(
    tmp_path: Path,
    database_url: str,
    session_factory: Factory,
    tiny_tool_model: ToolModel,
    tiny_adapter_dir: Path,
    serving: Any,
    evaluator: Any,
) -> None:
    config = make_config(tmp_path, database_url, tiny_tool_model.path, replay_share=0.25, dataset_limit=10)
    trainer = StandInTrainer(tiny_adapter_dir)
    base_failures = add_episodes(session_factory, tiny_tool_model, 8)
    add_episodes(session_factory, tiny_tool_model, 3, ok=True)
    first = cycle(config, session_factory, serving, evaluator, trainer)
    assert first.status == "promoted" and first.adapter == "rrr-v1", first
    assert trainer.calls[0]["init_adapter"] is None  # nothing in service yet: a fresh LoRA on the base
    assert run_row(session_factory, first.run_id).warm_start_from is None

    # Traffic under rrr-v1, plus earlier base failures that no promoted run consumed (leftovers).
    under_v1 = add_episodes(session_factory, tiny_tool_model, 8, adapter="rrr-v1")
    leftovers = add_episodes(session_factory, tiny_tool_model, 8)
    second = cycle(config, session_factory, serving, evaluator, trainer)
    assert second.status == "promoted" and second.adapter == "rrr-v2", second
    with session_factory() as s:
        v1 = repos.get_adapter(s, "rrr-v1")
        v2 = repos.get_adapter(s, "rrr-v2")
        assert v1 is not None and v2 is not None
        assert v2.warm_start_from == "rrr-v1" and v1.warm_start_from is None
    # The run started from rrr-v1's published, verified folder ...
    assert trainer.calls[1]["init_adapter"] == str(Path(v1.path).resolve())
    assert run_row(session_factory, second.run_id).warm_start_from == "rrr-v1"
    # ... on the failures collected under rrr-v1, with at most a quarter of the batch replayed.
    rows = set(trainer.calls[1]["episode_ids"])
    assert rows and rows <= set(under_v1) | set(leftovers) and not rows & set(base_failures)
    batch = (second.dataset or {})["train"] + (second.dataset or {})["heldout"]
    assert batch == 8 + 2  # 8 under rrr-v1, 2 replayed (0.25 of the dataset limit of 10)


def test_warm_start_can_be_turned_off(
    tmp_path: Path,
    database_url: str,
    session_factory: Factory,
    tiny_tool_model: ToolModel,
    tiny_adapter_dir: Path,
    serving: Any,
    evaluator: Any,
) -> None:
    config = make_config(tmp_path, database_url, tiny_tool_model.path, warm_start=False)
    trainer = StandInTrainer(tiny_adapter_dir)
    add_episodes(session_factory, tiny_tool_model, 8)
    assert cycle(config, session_factory, serving, evaluator, trainer).status == "promoted"
    add_episodes(session_factory, tiny_tool_model, 8, adapter="rrr-v1")
    second = cycle(config, session_factory, serving, evaluator, trainer)
    assert second.status == "promoted" and trainer.calls[1]["init_adapter"] is None
    assert run_row(session_factory, second.run_id).warm_start_from is None
