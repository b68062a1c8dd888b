"""One learner cycle, end to end: lease, count, dataset, train, gate, publish or reject, release.

Called by `rrr learn run` (one cycle now) and by the scheduler (`learner.schedule`) on every tick.
The cycle reads top to bottom in `run_cycle`:

1. Take the store lease `learner` (R17) or return `busy`. The lease is renewed in the background
   while the cycle runs; a cycle that loses it stops before publishing anything.
2. Housekeeping: candidates left by an interrupted publish are rejected; adapters retired longer
   than `drain_s` ago are unloaded from the engines (`adapters.serving.unload_drained`).
3. Count new trainable failures: unconsumed, and newer than the last run the gate rejected (so a
   rejected batch is not retrained until K more failures arrive). Fewer than K: `skipped`, no run.
4. A training run row; the failure dataset (train / held-out / regression); training in a
   subprocess (`learner.train.launch_training`).
5. The gate (`learner.gate`) on an evaluation engine private to the learner; numbers and decision
   stored on the run (`set_gate_result`).
6. Promote: `serving.publish_adapter`, then the batch is marked consumed by the run, and folders of
   versions retired `keep_cycles` publishes ago are deleted (`adapters.serving.collect_folders`). Otherwise the run
   is `rejected` with the gate's (or the publisher's) reasons and the batch stays available.
7. Release the lease.

Every failure is stored on the run (status `failed`, `error`) and returned as a `failed` result;
nothing propagates to the scheduler. This module does not read the environment: `LearnerConfig`
is built by the CLI.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from adapters import folder, serving
from agent.loop import LoopConfig
from engines.base import AdapterError, Engine, EngineError
from learner.gate import GateConfig, GateDecision, evaluate_gate
from store import repos
from store.models import TrainingRun

if TYPE_CHECKING:
    from learner.config import TrainConfig
    from learner.dataset import FailureDataset

log = logging.getLogger(__name__)

LEASE_NAME = "learner"
SessionFactory = Callable[[], Session]


@dataclass
class LearnerConfig:
    """Everything one learner process needs (the CLI fills it from flags and `RRR_*` variables).

    adapters_root: where `rrr-v<N>/` folders are published; must be the same path on the engines' host.
    model_path: the base model for training and for the learner's evaluation engine.
    engine_urls: the serving engines (vLLM or `rrr engine serve`); publishing loads on every one.
    database_url: handed to the training subprocess (it stores per-step metrics on the run).
    work_dir: training outputs and checkpoints, one folder per run.
    base_model_name: the engines' served base name (default: asked from the engines).
    min_new_failures: K, the new trainable failures needed before a cycle trains.
    interval_s / misfire_grace_s: the scheduler's tick and how late a tick may still run.
    lease_ttl_s: the lease's lifetime; renewed every third of it while the cycle runs.
    drain_s: how long a replaced adapter stays loaded; at least the API's request deadline plus
        its policy cache TTL, so requests resolved just before a flip can finish.
    keep_cycles: folders of retired versions are deleted only this many publishes later.
    max_lora_rank: the engines' `--max-lora-rank` (the evaluation engine enforces the same).
    dataset_limit, max_client_share, heldout_fraction, seed: the failure dataset (R20); mined
        data all comes from one "client", so single-tenant setups use max_client_share=1.0.
    regression_limit: past successes the gate re-checks for forgetting (default: dataset_limit);
        each costs two evaluation episodes, so a short cycle (the laptop demo) caps it.
    train_launcher: the command that starts the training child in place of `python`, e.g.
        `("accelerate", "launch", "--num_processes", "4")` for multi-GPU training (default: one process).
    """

    adapters_root: str
    model_path: str
    engine_urls: list[str]
    database_url: str
    work_dir: str
    base_model_name: str | None = None
    engine_api_key: str | None = None
    min_new_failures: int = 32
    interval_s: float = 3600.0
    misfire_grace_s: float = 600.0
    lease_ttl_s: float = 300.0
    drain_s: float = 120.0
    keep_cycles: int = 2
    max_lora_rank: int = 16
    dataset_limit: int = 512
    max_client_share: float = 0.25
    heldout_fraction: float = 0.2
    regression_limit: int | None = None
    seed: int = 0
    gate: GateConfig = field(default_factory=GateConfig)
    gate_loop: LoopConfig = field(default_factory=LoopConfig)
    train: TrainConfig | None = None
    probe_timeout_s: float = 60.0
    train_launcher: tuple[str, ...] = ()

    def validate(self) -> LearnerConfig:
        if self.min_new_failures < 1:
            raise ValueError(f"min_new_failures (K) must be at least 1, got {self.min_new_failures}")
        if self.interval_s <= 0 or self.misfire_grace_s <= 0:
            raise ValueError("interval_s and misfire_grace_s must be positive")
        if self.lease_ttl_s < 3:
            raise ValueError(f"lease_ttl_s must be at least 3 seconds, got {self.lease_ttl_s}")
        if self.drain_s < 0 or self.keep_cycles < 1:
            raise ValueError("drain_s must be >= 0 and keep_cycles >= 1")
        if self.dataset_limit < 1:
            raise ValueError(f"dataset_limit must be at least 1, got {self.dataset_limit}")
        if self.regression_limit is not None and self.regression_limit < 0:
            raise ValueError(f"regression_limit must be >= 0, got {self.regression_limit}")
        self.gate.validate()
        if self.train is not None:
            self.train.validate()
        return self

    def to_dict(self) -> dict[str, Any]:
        """What is stored on the training run (no URLs or keys: R14)."""
        data = {k: v for k, v in asdict(self).items()
                if k not in ("engine_urls", "database_url", "engine_api_key", "train", "gate", "gate_loop")}
        data["gate"] = asdict(self.gate)
        data["train"] = self.train.to_dict() if self.train is not None else None
        return data


@dataclass
class CycleResult:
    """What one cycle did. status: busy | skipped | promoted | rejected | failed."""

    status: str
    run_id: str | None = None
    new_failures: int = 0
    adapter: str | None = None
    reasons: list[str] = field(default_factory=list)
    error: str | None = None
    gate: dict[str, Any] | None = None
    dataset: dict[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TrainerResult(Protocol):
    adapter_dir: Any


Trainer = Callable[[str, str, str, Path, Any], TrainerResult]
"""`launch_training(run_id, database_url, model_path, work_dir, config)`, or a stand-in in tests.
The rows are in `work_dir / "train.jsonl"` when it is called."""


def default_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


# --- steps ------------------------------------------------------------------------------------------

def count_new_failures(session: Session) -> int:
    """Trainable failures not consumed by a promoted run and newer than the last rejected run."""
    from learner.dataset import _failure_candidates

    last_rejected = session.execute(
        select(func.max(TrainingRun.created_at)).where(TrainingRun.status == "rejected")).scalar_one_or_none()
    failures = _failure_candidates(session, exclude_consumed=True)
    if last_rejected is None:
        return len(failures)
    return sum(1 for c in failures if c.created_at > last_rejected)


class _Lease:
    """The store lease, renewed in the background; `held` turns False if a renewal fails."""

    def __init__(self, session_factory: SessionFactory, holder: str, ttl_s: float) -> None:
        self.session_factory = session_factory
        self.holder = holder
        self.ttl_s = ttl_s
        self.held = False
        self._task: asyncio.Task[None] | None = None

    def acquire(self) -> bool:
        with self.session_factory() as session, session.begin():
            self.held = repos.acquire_lease(session, LEASE_NAME, self.holder, self.ttl_s)
        if self.held:
            self._task = asyncio.get_running_loop().create_task(self._renew())
        return self.held

    def renew(self) -> bool:
        try:
            with self.session_factory() as session, session.begin():
                self.held = self.held and repos.renew_lease(session, LEASE_NAME, self.holder, self.ttl_s)
        except Exception:
            log.warning("lease renewal failed", exc_info=True)
            self.held = False
        return self.held

    async def _renew(self) -> None:
        while self.held:
            await asyncio.sleep(self.ttl_s / 3)
            if not await asyncio.to_thread(self.renew):
                log.error("the learner lease was lost; this cycle will not publish")

    async def release(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.held:
            try:
                with self.session_factory() as session, session.begin():
                    repos.release_lease(session, LEASE_NAME, self.holder)
            except Exception:  # it expires on its own after the TTL
                log.warning("could not release the learner lease", exc_info=True)
        self.held = False


def _error_text(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:4000]


def _set_run(session_factory: SessionFactory, run_id: str, **changes: Any) -> None:
    with session_factory() as session, session.begin():
        repos.update_training_run(session, run_id, **changes)


async def base_model_name(engines: Engine, configured: str | None) -> str:
    """The served base name: configured, else the first `/v1/models` card without a parent."""
    if configured:
        return configured
    for card in await engines.list_models():
        if card.get("parent") is None:
            return str(card.get("id"))
    raise EngineError("the engines list no base model")


async def _housekeeping(config: LearnerConfig, session_factory: SessionFactory, engines: Engine) -> None:
    try:
        stale = await asyncio.to_thread(serving.reject_stale_candidates, session_factory)
        if stale:
            log.warning("rejected adapters left by an interrupted publish: %s", ", ".join(stale))
        await serving.unload_drained(engines, session_factory, config.drain_s)
    except Exception:  # housekeeping must never stop a cycle
        log.warning("learner housekeeping failed", exc_info=True)


def _incumbent(session_factory: SessionFactory, adapters_root: str) -> tuple[str, str] | None:
    with session_factory() as session:
        active = repos.get_active_adapter(session)
    if active is None:
        return None
    verified = folder.verify_adapter_dir(active.path, adapters_root, manifest_sha256=active.manifest_sha256)
    return active.name, verified.path


async def _local_eval_engine(config: LearnerConfig) -> Engine:
    from engines.local import LocalEngine

    return await asyncio.to_thread(LocalEngine, config.model_path, max_lora_rank=config.max_lora_rank,
                                   name="learner-eval")


# --- the cycle ----------------------------------------------------------------------------------------

async def run_cycle(
    config: LearnerConfig,
    *,
    session_factory: SessionFactory,
    engines: Engine,
    eval_engine: Engine | None = None,
    trainer: Trainer | None = None,
    holder: str | None = None,
    on_event: Callable[[str], None] | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    on_gate_item: Callable[[], None] | None = None,
) -> CycleResult:
    """Run one cycle (module docstring). Never raises for a failed step: see `CycleResult.status`.

    `eval_engine` defaults to a `LocalEngine` over `config.model_path` created for this cycle;
    `trainer` defaults to `learner.train.launch_training` (which reports each step to `on_step`).
    `on_event` receives one line per stage (progress output); `on_gate_item` is called after each
    gate evaluation episode (a progress bar: 2 x (held-out + regression) episodes in all).
    """
    def say(message: str) -> None:
        log.info("%s", message)
        if on_event is not None:
            on_event(message)

    lease = _Lease(session_factory, holder or default_holder(), config.lease_ttl_s)
    try:
        if not lease.acquire():
            say("another learner holds the lease; nothing to do")
            return CycleResult(status="busy")
    except Exception as exc:
        log.exception("could not take the learner lease")
        return CycleResult(status="failed", error=_error_text(exc))
    try:
        if trainer is None:
            from learner.train import launch_training

            trainer = functools.partial(launch_training, on_step=on_step, launcher=config.train_launcher or None)
        return await _run_locked(config, session_factory, engines, eval_engine, trainer, lease, say, on_gate_item)
    finally:
        await lease.release()


async def _run_locked(config: LearnerConfig, session_factory: SessionFactory, engines: Engine,
                      eval_engine: Engine | None, trainer: Trainer, lease: _Lease,
                      say: Callable[[str], None], on_gate_item: Callable[[], None] | None = None) -> CycleResult:
    await _housekeeping(config, session_factory, engines)
    try:
        with session_factory() as session:
            new = count_new_failures(session)
    except Exception as exc:
        log.exception("could not count failures")
        return CycleResult(status="failed", error=_error_text(exc))
    if new < config.min_new_failures:
        say(f"{new} new trainable failures; training starts at {config.min_new_failures}")
        return CycleResult(status="skipped", new_failures=new)
    say(f"{new} new trainable failures: starting a training run")
    with session_factory() as session, session.begin():
        run_id = repos.create_training_run(session, config=config.to_dict()).id
    result = CycleResult(status="failed", run_id=run_id, new_failures=new)
    try:
        await _train_gate_publish(config, session_factory, engines, eval_engine, trainer, lease, say, result,
                                  on_gate_item)
    except Exception as exc:
        log.exception("learner cycle %s failed", run_id)
        result.status, result.error = "failed", _error_text(exc)
        with contextlib.suppress(Exception):
            _set_run(session_factory, run_id, status="failed", error=result.error)
    return result


async def _train_gate_publish(config: LearnerConfig, session_factory: SessionFactory, engines: Engine,
                              eval_engine: Engine | None, trainer: Trainer, lease: _Lease,
                              say: Callable[[str], None], result: CycleResult,
                              on_gate_item: Callable[[], None] | None = None) -> None:
    from learner.config import TrainConfig
    from learner.dataset import build_failure_dataset, write_rows

    assert result.run_id is not None
    run_id = result.run_id
    with session_factory() as session:
        dataset: FailureDataset = build_failure_dataset(
            session, limit=config.dataset_limit, max_client_share=config.max_client_share,
            heldout_fraction=config.heldout_fraction, seed=config.seed, regression_limit=config.regression_limit)
    result.dataset = dataset.summary()
    _set_run(session_factory, run_id, status="running", dataset_size=len(dataset.train))
    say(f"run {run_id}: dataset {dataset.summary()}")
    if not dataset.train:
        raise ValueError("the failure dataset has no training rows (check max_client_share and the held-out split)")
    train_config = config.train or TrainConfig(max_lora_rank=config.max_lora_rank)
    work = Path(config.work_dir) / run_id
    write_rows(work / "train.jsonl", dataset.train)
    say(f"run {run_id}: training ({train_config.max_steps} steps)")
    trained = await asyncio.to_thread(trainer, run_id, config.database_url, config.model_path, work, train_config)
    adapter_dir = str(trained.adapter_dir)
    _set_run(session_factory, run_id, status="succeeded")

    folder.check_adapter_source(adapter_dir)
    incumbent = _incumbent(session_factory, config.adapters_root)
    say(f"run {run_id}: gate against {incumbent[0] if incumbent else 'the base model'}")
    own_engine = eval_engine is None
    engine = eval_engine if eval_engine is not None else await _local_eval_engine(config)
    try:
        decision = await evaluate_gate(engine, candidate_dir=adapter_dir, heldout=dataset.heldout,
                                       regression=dataset.regression, incumbent=incumbent, config=config.gate,
                                       loop=config.gate_loop, on_item=on_gate_item)
    except AdapterError as exc:  # the candidate itself cannot be served: a rejection, not a crash
        decision = GateDecision(promote=False, reasons=[f"the candidate cannot be loaded: {exc.message}"])
    finally:
        if own_engine:
            await engine.aclose()
    result.gate, result.reasons = decision.to_dict(), list(decision.reasons)
    with session_factory() as session, session.begin():
        repos.set_gate_result(session, run_id, decision.to_dict())
    say(f"run {run_id}: gate {'passed' if decision.promote else 'rejected'}: {'; '.join(decision.reasons)}")
    if not decision.promote:
        result.status = "rejected"
        _set_run(session_factory, run_id, status="rejected", error="gate: " + "; ".join(decision.reasons))
        return
    if not lease.renew():
        raise RuntimeError("the learner lease was lost before publishing; nothing was published")
    base = await base_model_name(engines, config.base_model_name)
    published = await serving.publish_adapter(
        adapter_dir, adapters_root=config.adapters_root, session_factory=session_factory, engines=engines,
        base_model=base, run_id=run_id, drain_s=config.drain_s, probe_timeout_s=config.probe_timeout_s,
        metrics={"gate": decision.numbers})
    result.adapter = published.name
    if not published.ok:
        result.status = "rejected"
        result.reasons.append(f"publish: {published.reason}")
        _set_run(session_factory, run_id, status="rejected", adapter_name=published.name,
                 error=f"publish: {published.reason}")
        say(f"run {run_id}: {published.name} not published: {published.reason}")
        return
    with session_factory() as session, session.begin():
        repos.mark_episodes_consumed(session, dataset.episode_ids, run_id)
        repos.update_training_run(session, run_id, status="promoted", adapter_name=published.name)
    result.status = "promoted"
    say(f"run {run_id}: {published.name} is active (previous: {published.previous or 'base model'})")
    try:
        await serving.collect_folders(config.adapters_root, session_factory, engines, keep_cycles=config.keep_cycles)
    except Exception:
        log.warning("could not clean up old adapter folders", exc_info=True)
