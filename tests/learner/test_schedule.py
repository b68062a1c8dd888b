"""learner/schedule.py: the APScheduler job (coalesced, one instance, grace time) and two schedulers
racing for the store lease (R17).

The race uses two real `LearnerScheduler`s (each with its own event loop thread and APScheduler)
on one database, real engines and the real gate; the trainer is a stand-in that takes a while, so
both first ticks overlap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy.orm import Session

from engines.pool import EnginePool
from learner.config import GateConfig
from learner.cycle import CycleResult
from learner.schedule import JOB_ID, LearnerScheduler, build_scheduler
from store import repos
from tests.conftest import ToolModel
from tests.learner.test_cycle import StandInTrainer, add_episodes, make_config

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


class Counter:
    def __init__(self, hold_s: float = 0.0) -> None:
        self.hold_s = hold_s
        self.runs = 0
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.runs += 1
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        time.sleep(self.hold_s)
        with self._lock:
            self.running -= 1


def _missed_ten(scheduler: Any) -> None:
    """Pretend the process was stopped for ten intervals: the next run time lies ten intervals back."""
    job = scheduler.get_job(JOB_ID)
    interval = job.trigger.interval
    job.modify(next_run_time=job.trigger.start_date - 10 * interval)


def test_the_job_has_a_fixed_id_one_instance_coalescing_and_a_grace_time() -> None:
    scheduler = build_scheduler(Counter(), interval_s=30, misfire_grace_s=600, run_now=False)
    job = scheduler.get_job(JOB_ID)
    assert job is not None and len(scheduler.get_jobs()) == 1
    assert (job.max_instances, job.coalesce, job.misfire_grace_time) == (1, True, 600)
    assert job.trigger.interval == timedelta(seconds=30)
    again = build_scheduler(Counter(), interval_s=30, misfire_grace_s=600, blocking=True)
    assert type(again).__name__ == "BlockingScheduler" and again.get_job(JOB_ID).next_run_time is not None


def test_missed_ticks_run_once_not_once_per_missed_interval() -> None:
    counter = Counter()
    scheduler = build_scheduler(counter, interval_s=5, misfire_grace_s=600, run_now=False)
    _missed_ten(scheduler)
    scheduler.start()
    try:
        time.sleep(1.0)
    finally:
        scheduler.shutdown()
    assert counter.runs == 1

    # The same backlog without coalescing would stampede: that is what the setting prevents.
    control, stampede = BackgroundScheduler(), Counter()
    control.add_job(stampede, "interval", seconds=5, id=JOB_ID, coalesce=False, misfire_grace_time=600)
    _missed_ten(control)
    control.start()
    try:
        time.sleep(1.0)
    finally:
        control.shutdown()
    assert stampede.runs >= 10


def test_a_tick_that_outlasts_the_interval_is_never_run_twice_at_once() -> None:
    counter = Counter(hold_s=0.6)
    scheduler = build_scheduler(counter, interval_s=0.1, misfire_grace_s=1)
    scheduler.start()
    try:
        time.sleep(1.5)
    finally:
        scheduler.shutdown()
    assert counter.most_at_once == 1
    assert 1 <= counter.runs <= 3  # about one per 0.6 s, not one per 0.1 s interval


def test_two_schedulers_racing_for_one_lease_make_exactly_one_run(
    tmp_path: Path,
    database_url: str,
    session_factory: Callable[[], Session],
    tiny_tool_model: ToolModel,
    tiny_adapter_dir: Path,
) -> None:
    from engines.local import LocalEngine

    serving = LocalEngine(str(tiny_tool_model.path), served_name="tiny", max_lora_rank=16)
    evaluator = LocalEngine(str(tiny_tool_model.path), served_name="tiny", max_lora_rank=16)
    add_episodes(session_factory, tiny_tool_model, 8)
    config = make_config(
        tmp_path,
        database_url,
        tiny_tool_model.path,
        interval_s=3600,
        gate=GateConfig(margin=-1.0, tolerance=1.0, min_items=1, max_tokens=16),
    )
    trainer = StandInTrainer(tiny_adapter_dir, delay_s=1.5)
    done = threading.Event()
    results: list[CycleResult] = []

    def collect(result: CycleResult) -> None:
        results.append(result)
        if len(results) == 2:
            done.set()

    schedulers = [
        LearnerScheduler(
            config,
            session_factory=session_factory,
            make_engines=lambda: EnginePool([serving]),
            make_eval_engine=lambda: evaluator,
            trainer=trainer,
            holder=f"scheduler-{i}",
            on_result=collect,
        )
        for i in range(2)
    ]
    try:
        for scheduler in schedulers:
            scheduler.start(run_now=True)
        assert done.wait(120), [r.status for r in results]
    finally:
        for scheduler in schedulers:
            scheduler.shutdown()
    assert sorted(r.status for r in results) == ["busy", "promoted"], results
    assert len(trainer.calls) == 1
    with session_factory() as s:
        runs = repos.list_training_runs(s)
        assert len(runs) == 1 and runs[0].status == "promoted"
        assert [a.name for a in repos.list_adapters(s)] == ["rrr-v1"]
        assert repos.get_lease(s, "learner") is None
    # A third tick, now that the lease is free, finds the batch consumed and trains nothing.
    third = LearnerScheduler(
        config,
        session_factory=session_factory,
        make_engines=lambda: EnginePool([serving]),
        make_eval_engine=lambda: evaluator,
        trainer=trainer,
    )
    try:
        assert third.tick().status == "skipped"
    finally:
        third.shutdown()
    assert len(trainer.calls) == 1


def test_a_crashing_cycle_does_not_kill_the_scheduler(
    tmp_path: Path, database_url: str, session_factory: Callable[[], Session], tiny_tool_model: ToolModel
) -> None:
    config = make_config(tmp_path, database_url, tiny_tool_model.path)

    def broken_engines() -> Any:
        raise RuntimeError("engine pool misconfigured")

    scheduler = LearnerScheduler(config, session_factory=session_factory, make_engines=broken_engines)
    try:
        first, second = scheduler.tick(), scheduler.tick()
    finally:
        scheduler.shutdown()
    assert first.status == second.status == "failed"
    assert "engine pool misconfigured" in (first.error or "")


def test_shutdown_during_a_cycle_stops_it_marks_its_run_interrupted_and_frees_the_lease(
    tmp_path: Path,
    database_url: str,
    session_factory: Callable[[], Session],
    tiny_tool_model: ToolModel,
    tiny_adapter_dir: Path,
) -> None:
    # `rrr learn schedule` on SIGTERM: the running cycle is stopped, not waited for to its end.
    from engines.local import LocalEngine

    serving = LocalEngine(str(tiny_tool_model.path), served_name="tiny", max_lora_rank=16)
    add_episodes(session_factory, tiny_tool_model, 8)
    config = make_config(tmp_path, database_url, tiny_tool_model.path, interval_s=3600)
    trainer = StandInTrainer(tiny_adapter_dir, delay_s=3.0)
    training = threading.Event()
    results: list[CycleResult] = []
    scheduler = LearnerScheduler(
        config,
        session_factory=session_factory,
        make_engines=lambda: EnginePool([serving]),
        trainer=trainer,
        on_result=results.append,
        on_event=lambda e: training.set() if e.stage == "train" else None,
    )
    scheduler.start(run_now=True)
    try:
        assert training.wait(60)
    finally:
        scheduler.shutdown()
    assert [r.status for r in results] == ["failed"] and "stopped" in (results[0].error or "")
    with session_factory() as s:
        (run,) = repos.list_training_runs(s)
        assert run.status == "interrupted" and "during stage train" in (run.error or "")
        assert repos.get_lease(s, "learner") is None
