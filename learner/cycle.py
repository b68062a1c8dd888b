"""One learner cycle, end to end: lease, count, dataset, train, gate, publish or reject, release.

Called by `rrr learn run` (one cycle now) and by the scheduler (`learner.schedule`) on every tick.
The cycle reads top to bottom in `run_cycle` (steps 1-3, 8) and `_train_gate_publish` (4-7):

1. Take the store lease `learner` (R17) or return `busy`. The lease is renewed in the background
   while the cycle runs; a cycle that loses it stops before publishing anything.
2. Housekeeping: candidates left by an interrupted publish are rejected; adapters retired longer
   than `drain_s` ago are unloaded from the engines (`adapters.serving.unload_drained`). Runs left
   unfinished by a process that died are marked `interrupted`, and the newest interrupted run is
   continued in a new run (same data, same config, from its newest complete checkpoint; see
   `learner.resume`) instead of steps 3-4, or the cycle says why it cannot.
3. Count new trainable failures: unconsumed, and newer than the last run the gate rejected (so a
   rejected batch is not retrained until K more failures arrive). Fewer than K: `skipped`, no run.
4. A training run row and the failure dataset (train / held-out / regression).
5. Training in a subprocess (`learner.launch.launch_training`).
6. The gate (`learner.gate`) on an evaluation engine private to the learner; numbers and decision
   stored on the run (`set_gate_result`).
7. Promote: `adapters.serving.publish_adapter`, then the batch is marked consumed by the run, and
   folders of versions retired `keep_cycles` publishes ago are deleted (`collect_folders`).
   Otherwise the run is `rejected` with the gate's (or the publisher's) reasons and the batch
   stays available.
8. Release the lease.

Stopped (SIGTERM, Ctrl-C: the task is cancelled), a cycle kills its training child, marks its run
`interrupted` with the stage it was in, releases the lease and re-raises; the next cycle continues it.

Progress reaches callers as typed `CycleEvent`s (stage, message, time). Database calls run in
worker threads, off the event loop.
Every failure is stored on the run (status `failed`, `error`) and returned as a `failed` result;
nothing propagates to the scheduler. This module does not read the environment: `LearnerConfig`
is built by the entry points (`learner.settings`, the CLI).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from adapters import folder, serving
from engines.base import AdapterError, Engine, EngineError
from learner.config import LearnerConfig, TrainConfig
from learner.gate import GateDecision, evaluate_gate
from learner.resume import Resumable, continue_run, find_interrupted, save_dataset
from store import repos
from store.db import read_with, write_with
from store.models import TrainingRun
from store.records import utcnow

if TYPE_CHECKING:
    from learner.dataset import FailureDataset

log = logging.getLogger(__name__)

LEASE_NAME = "learner"
SessionFactory = Callable[[], Session]


CycleStatus = Literal["busy", "skipped", "promoted", "rejected", "failed"]
Stage = Literal[
    "busy",
    "lease",
    "interrupted",
    "resume",
    "skipped",
    "dataset",
    "train",
    "gate",
    "gate_done",
    "publish",
    "promoted",
    "rejected",
    "failed",
]


@dataclass(frozen=True)
class CycleEvent:
    """One stage of a cycle as it starts (or, for `gate_done` and the final statuses, ends): the
    stage name, a line for people, and `time.monotonic()` at that moment. Progress displays and the
    demo's stage timings read these; nothing parses the text."""

    stage: Stage
    message: str
    at: float
    run_id: str | None = None


@dataclass
class CycleResult:
    """What one cycle did. status: busy | skipped | promoted | rejected | failed."""

    status: CycleStatus
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


Trainer = Callable[..., TrainerResult]
"""`launch_training(run_id, database_url, model_path, work_dir, config, *, init_adapter)`, or a
stand-in in tests. The rows are in `work_dir / "train.jsonl"` when it is called; `init_adapter`
is the verified folder of the adapter to continue (None: a fresh LoRA)."""


def default_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def holder_is_gone(holder: str) -> bool:
    """Whether a lease holder named by ``default_holder`` is a process of this host that no longer runs.

    A learner killed with -9 cannot release its lease, and its TTL (minutes) would keep every other
    learner out; on the same host, that its process is gone is known at once. Holders on other
    hosts, or named otherwise, are never judged here (their TTL decides).
    """
    host, _, rest = holder.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit() or int(pid_text) in (0, os.getpid()):
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists (another user's), or cannot be checked: not ours to judge
        return False
    return False


# --- steps ------------------------------------------------------------------------------------------


def count_new_failures(session: Session) -> int:
    """Trainable failures not consumed by a promoted run and newer than the last rejected run."""
    from learner.dataset import failure_candidates

    last_rejected = session.execute(
        select(func.max(TrainingRun.created_at)).where(TrainingRun.status == "rejected")
    ).scalar_one_or_none()
    failures = failure_candidates(session, exclude_consumed=True)
    if last_rejected is None:
        return len(failures)
    return sum(1 for c in failures if c.created_at > last_rejected)


class _Lease:
    """The store lease with heartbeats: renewed every `heartbeat_s` in the background, taken over from
    a holder silent for `stale_s` (or whose process on this host is gone); `held` turns False if a
    renewal fails."""

    def __init__(
        self, session_factory: SessionFactory, holder: str, ttl_s: float, *, heartbeat_s: float, stale_s: float
    ) -> None:
        self.session_factory = session_factory
        self.holder = holder
        self.ttl_s = ttl_s
        self.heartbeat_s = min(heartbeat_s, ttl_s / 3)
        self.stale_s = stale_s
        self.held = False
        self.taken_over: str | None = None
        self._task: asyncio.Task[None] | None = None

    def acquire(self) -> bool:
        """Take the lease: free, expired, or its holder silent for `stale_s` or gone (`holder_is_gone`)."""
        self.taken_over = None
        with self.session_factory() as session, session.begin():
            before = repos.get_lease(session, LEASE_NAME)
            other = before is not None and before.holder != self.holder
            why = None
            if before is not None and other and holder_is_gone(before.holder):
                # Released only if that dead holder still holds it, then taken as anyone would.
                repos.release_lease(session, LEASE_NAME, before.holder)
                why = "that process is no longer running"
            elif before is not None and other and before.expires_at > utcnow():
                last = before.heartbeat_at or before.acquired_at
                why = f"it sent no heartbeat for {(utcnow() - last).total_seconds():.0f} s"
            self.held = repos.acquire_lease(session, LEASE_NAME, self.holder, self.ttl_s, stale_after_s=self.stale_s)
            if self.held and before is not None and other and why:
                self.taken_over = f"{before.holder}: {why}"
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
            await asyncio.sleep(self.heartbeat_s)
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

    return await asyncio.to_thread(
        LocalEngine, config.model_path, max_lora_rank=config.max_lora_rank, name="learner-eval"
    )


# --- the cycle ----------------------------------------------------------------------------------------


async def run_cycle(
    config: LearnerConfig,
    *,
    session_factory: SessionFactory,
    engines: Engine,
    eval_engine: Engine | None = None,
    trainer: Trainer | None = None,
    holder: str | None = None,
    on_event: Callable[[CycleEvent], None] | None = None,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    on_gate_item: Callable[[], None] | None = None,
) -> CycleResult:
    """Run one cycle (module docstring). Never raises for a failed step: see `CycleResult.status`.

    `eval_engine` defaults to a `LocalEngine` over `config.model_path` created for this cycle;
    `trainer` defaults to `learner.launch.launch_training` (which reports each step to `on_step`).
    `on_event` receives a `CycleEvent` per stage; `on_gate_item` is called after each gate
    evaluation episode (a progress bar: 2 x (held-out + regression) episodes in all).
    """

    stage: list[Stage] = ["lease"]

    def say(stage_now: Stage, message: str, run_id: str | None = None) -> None:
        stage[0] = stage_now
        log.info("%s", message)
        if on_event is not None:
            on_event(CycleEvent(stage=stage_now, message=message, at=time.monotonic(), run_id=run_id))

    if trainer is None:
        from learner.launch import launch_training

        trainer = functools.partial(launch_training, on_step=on_step, launcher=config.train_launcher or None)

    # 1. The lease: one cycle at a time across every learner process (heartbeats in the background).
    lease = _Lease(
        session_factory,
        holder or default_holder(),
        config.lease_ttl_s,
        heartbeat_s=config.lease_heartbeat_s,
        stale_s=config.lease_stale_s,
    )
    try:
        if not lease.acquire():
            say("busy", "another learner holds the lease; nothing to do")
            return CycleResult(status="busy")
        if lease.taken_over:
            say("lease", f"took over the learner lease of {lease.taken_over}")
    except Exception as exc:
        log.exception("could not take the learner lease")
        return CycleResult(status="failed", error=_error_text(exc))
    try:
        # 2. Housekeeping left by earlier processes (stale candidates, drained adapters, interrupted runs).
        await _housekeeping(config, session_factory, engines)
        try:
            start = await _start_run(config, session_factory, say)
        except Exception as exc:
            log.exception("could not start a run")
            return CycleResult(status="failed", error=_error_text(exc))
        if isinstance(start, CycleResult):
            return start
        run_id, new, resumable = start
        result = CycleResult(status="failed", run_id=run_id, new_failures=new)
        try:
            await _train_gate_publish(
                config, session_factory, engines, eval_engine, trainer, lease, say, result, on_gate_item, resumable
            )
        except asyncio.CancelledError:
            # Stopped (SIGTERM, Ctrl-C): the training child dies with us, the run says where it stopped.
            _interrupt(config, session_factory, run_id, stage[0])
            say("interrupted", f"run {run_id} interrupted during stage {stage[0]}; the next cycle continues it", run_id)
            raise
        except Exception as exc:
            log.exception("learner cycle %s failed", run_id)
            result.status, result.error = "failed", _error_text(exc)
            say("failed", f"run {run_id} failed: {result.error}", run_id)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(_set_run, session_factory, run_id, status="failed", error=result.error)
        return result
    finally:
        # 8. Release the lease, whatever happened.
        await lease.release()


def _interrupt(config: LearnerConfig, session_factory: SessionFactory, run_id: str, stage: str) -> None:
    """Kill the run's training child (its checkpoints stay) and mark the run `interrupted`. Blocking,
    on purpose: it runs while the cycle's task is being cancelled."""
    from learner.launch import stop_training

    stop_training(Path(config.work_dir) / run_id)
    try:
        _set_run(session_factory, run_id, status="interrupted", error=f"interrupted during stage {stage}: stopped")
    except Exception:  # the next cycle marks it from its status
        log.warning("could not mark run %s interrupted", run_id, exc_info=True)


async def _start_run(
    config: LearnerConfig, session_factory: SessionFactory, say: Callable[..., None]
) -> CycleResult | tuple[str, int, Resumable | None]:
    """Steps 2-4's start: continue the newest interrupted run, or count new failures and create a
    run. A `CycleResult` when there is nothing to run (busy: an orphaned trainer; skipped: below K)."""
    interrupted = await asyncio.to_thread(find_interrupted, config, session_factory)
    if interrupted.still_training:
        say("busy", f"a training process of run {interrupted.still_training} is still running; waiting for it")
        return CycleResult(status="busy")
    for old in interrupted.marked:
        say("interrupted", f"run {old} was interrupted (its process stopped); marked interrupted", old)
    if interrupted.reason:
        say("interrupted", f"the interrupted run cannot be continued: {interrupted.reason}; starting afresh")
    resumable = interrupted.resumable
    if resumable is not None:
        run_id = await asyncio.to_thread(continue_run, resumable, config, session_factory)
        where = "its trained adapter" if resumable.trained else f"checkpoint step {resumable.step or 0}"
        say("resume", f"run {run_id} continues interrupted run {resumable.run_id} from {where}", run_id)
        return run_id, len(resumable.dataset.episode_ids), resumable

    # 3. Enough new failures to be worth a run?
    new = await asyncio.to_thread(read_with, session_factory, count_new_failures)
    if new < config.min_new_failures:
        say("skipped", f"{new} new trainable failures; training starts at {config.min_new_failures}")
        return CycleResult(status="skipped", new_failures=new)
    run_id = await asyncio.to_thread(
        write_with, session_factory, lambda s: repos.create_training_run(s, config=config.to_dict()).id
    )
    say("dataset", f"{new} new trainable failures: starting training run {run_id}", run_id)
    return run_id, new, None


async def _train_gate_publish(
    config: LearnerConfig,
    session_factory: SessionFactory,
    engines: Engine,
    eval_engine: Engine | None,
    trainer: Trainer,
    lease: _Lease,
    say: Callable[..., None],
    result: CycleResult,
    on_gate_item: Callable[[], None] | None,
    resumable: Resumable | None = None,
) -> None:
    """Steps 4-7 of one run; `result` is filled as they go (the caller stores a failure).
    With `resumable`, the run continues an interrupted one: its dataset, folder and starting adapter."""
    assert result.run_id is not None
    run_id = result.run_id

    # 4. The policy in service (the gate's incumbent, and with `warm_start` the run's starting point);
    #    the failure dataset: train, held-out and regression splits (R20), written for the trainer.
    incumbent = await asyncio.to_thread(_incumbent, session_factory, config.adapters_root)
    work = Path(config.work_dir) / run_id
    if resumable is not None:
        warm, dataset = resumable.warm, resumable.dataset
    else:
        warm = incumbent if config.warm_start else None
        dataset = await asyncio.to_thread(_new_dataset, config, session_factory, incumbent, work)
    result.dataset = dataset.summary()
    await asyncio.to_thread(_set_run, session_factory, run_id, status="running", dataset_size=len(dataset.train))
    say("dataset", f"run {run_id}: dataset {dataset.summary()}", run_id)

    # 5. GRPO in a child process (the completion is the reflection; only its tokens are trained),
    #    continuing the adapter in service (cycles compound) or, with none, a fresh LoRA on the base.
    train_config = config.train or TrainConfig(
        max_lora_rank=config.max_lora_rank, tool_call_parser=config.tool_call_parser
    )
    start = f"from {warm[0]}" if warm else "from the base model"
    if resumable is not None and resumable.step:
        start += f", resuming after step {resumable.step}"
    say("train", f"run {run_id}: training ({train_config.max_steps} steps, {start})", run_id)
    if warm is not None:
        await asyncio.to_thread(_set_run, session_factory, run_id, warm_start_from=warm[0])
    trained = await asyncio.to_thread(
        functools.partial(trainer, init_adapter=warm[1] if warm else None),
        run_id,
        config.database_url,
        config.model_path,
        work,
        train_config,
    )
    adapter_dir = str(trained.adapter_dir)
    await asyncio.to_thread(_set_run, session_factory, run_id, status="succeeded")

    # 6. The gate: candidate against the adapter in service, on an engine private to the learner.
    await asyncio.to_thread(folder.check_adapter_source, adapter_dir)
    say("gate", f"run {run_id}: gate against {incumbent[0] if incumbent else 'the base model'}", run_id)
    decision = await _gate(config, eval_engine, adapter_dir, dataset, incumbent, on_gate_item)
    result.gate, result.reasons = decision.to_dict(), list(decision.reasons)
    await asyncio.to_thread(write_with, session_factory, lambda s: repos.set_gate_result(s, run_id, decision.to_dict()))
    say(
        "gate_done",
        f"run {run_id}: gate {'passed' if decision.promote else 'rejected'}: {'; '.join(decision.reasons)}",
        run_id,
    )
    if not decision.promote:
        result.status = "rejected"
        await asyncio.to_thread(
            _set_run, session_factory, run_id, status="rejected", error="gate: " + "; ".join(decision.reasons)
        )
        say("rejected", f"run {run_id}: rejected by the gate", run_id)
        return

    # 7. Publish under the lease, mark the batch consumed, collect old folders.
    if not await asyncio.to_thread(lease.renew):
        raise RuntimeError("the learner lease was lost before publishing; nothing was published")
    say("publish", f"run {run_id}: publishing", run_id)
    base = await base_model_name(engines, config.base_model_name)
    published = await serving.publish_adapter(
        adapter_dir,
        adapters_root=config.adapters_root,
        session_factory=session_factory,
        engines=engines,
        base_model=base,
        run_id=run_id,
        drain_s=config.drain_s,
        probe_timeout_s=config.probe_timeout_s,
        metrics={"gate": decision.numbers},
        warm_start_from=warm[0] if warm else None,
    )
    result.adapter = published.name
    if not published.ok:
        result.status = "rejected"
        result.reasons.append(f"publish: {published.reason}")
        await asyncio.to_thread(
            _set_run,
            session_factory,
            run_id,
            status="rejected",
            adapter_name=published.name,
            error=f"publish: {published.reason}",
        )
        say("rejected", f"run {run_id}: {published.name} not published: {published.reason}", run_id)
        return

    def promote(session: Session) -> None:
        repos.mark_episodes_consumed(session, dataset.episode_ids, run_id)
        repos.update_training_run(session, run_id, status="promoted", adapter_name=published.name)

    await asyncio.to_thread(write_with, session_factory, promote)
    result.status = "promoted"
    say(
        "promoted", f"run {run_id}: {published.name} is active (previous: {published.previous or 'base model'})", run_id
    )
    try:
        await serving.collect_folders(config.adapters_root, session_factory, engines, keep_cycles=config.keep_cycles)
    except Exception:
        log.warning("could not clean up old adapter folders", exc_info=True)


def _new_dataset(
    config: LearnerConfig, session_factory: SessionFactory, incumbent: tuple[str, str] | None, work: Path
) -> FailureDataset:
    """Build the run's failure dataset and write it into the run's folder: the rows for the trainer
    (`train.jsonl`) and the whole dataset (`learner.resume.save_dataset`) for a resumed run."""
    from learner.dataset import build_failure_dataset
    from learner.rows import write_rows

    dataset = read_with(
        session_factory,
        lambda s: build_failure_dataset(
            s,
            limit=config.dataset_limit,
            max_client_share=config.max_client_share,
            heldout_fraction=config.heldout_fraction,
            seed=config.seed,
            regression_limit=config.regression_limit,
            served_by=(incumbent[0] if incumbent else None) if config.warm_start else False,
            replay_share=config.replay_share,
            tool_call_parser=config.tool_call_parser,
        ),
    )
    if not dataset.train:
        raise ValueError("the failure dataset has no training rows (check max_client_share and the held-out split)")
    save_dataset(work, dataset)
    write_rows(work / "train.jsonl", dataset.train)
    return dataset


async def _gate(
    config: LearnerConfig,
    eval_engine: Engine | None,
    adapter_dir: str,
    dataset: FailureDataset,
    incumbent: tuple[str, str] | None,
    on_gate_item: Callable[[], None] | None,
) -> GateDecision:
    own_engine = eval_engine is None
    engine = eval_engine if eval_engine is not None else await _local_eval_engine(config)
    try:
        return await evaluate_gate(
            engine,
            candidate_dir=adapter_dir,
            heldout=dataset.heldout,
            regression=dataset.regression,
            incumbent=incumbent,
            config=config.gate,
            loop=config.gate_loop,
            on_item=on_gate_item,
        )
    except AdapterError as exc:  # the candidate itself cannot be served: a rejection, not a crash
        return GateDecision(promote=False, reasons=[f"the candidate cannot be loaded: {exc.message}"])
    finally:
        if own_engine:
            await engine.aclose()
