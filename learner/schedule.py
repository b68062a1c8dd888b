"""The learner's schedule: one APScheduler 3 interval job that runs `cycle.run_cycle` (R17).

Called by `rrr learn schedule` (blocking, in the foreground) and by anything embedding the learner
in a thread (`LearnerScheduler.start(blocking=False)`). The job has a fixed id, `max_instances=1`
(a tick that comes while a cycle runs is skipped, not queued), `coalesce=True` (ticks missed while
the process was paused or busy run once, not once per missed interval) and an explicit
`misfire_grace_time` (a tick later than that is dropped; the next interval comes anyway). The first
tick runs at start. Each tick trains only when the cycle finds at least K new trainable failures;
across processes the store lease lets one cycle run at a time, so two schedulers are safe.

All cycles of one scheduler run on one private event loop thread: engine clients (httpx) belong to
the loop that created them, and the publisher's drain-then-unload tasks live on it between ticks.
This module does not train, gate or publish itself.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy.orm import Session

from adapters.serving import cancel_background_unloads
from engines.base import Engine
from learner.config import LearnerConfig
from learner.cycle import CycleEvent, CycleResult, Trainer, run_cycle

log = logging.getLogger(__name__)

JOB_ID = "rrr-learner-cycle"


def build_scheduler(
    tick: Callable[[], Any], *, interval_s: float, misfire_grace_s: float, blocking: bool = False, run_now: bool = True
) -> BaseScheduler:
    """A scheduler holding the one learner job (not started)."""
    scheduler: BaseScheduler = BlockingScheduler(timezone=UTC) if blocking else BackgroundScheduler(timezone=UTC)
    extra: dict[str, Any] = {"next_run_time": datetime.now(UTC)} if run_now else {}
    scheduler.add_job(
        tick,
        IntervalTrigger(seconds=interval_s, timezone=UTC),
        id=JOB_ID,
        name="learner cycle",
        max_instances=1,
        coalesce=True,
        misfire_grace_time=max(1, round(misfire_grace_s)),
        replace_existing=True,
        **extra,
    )
    return scheduler


class LearnerScheduler:
    """Runs learner cycles on a schedule (or on demand with `tick`), on its own event loop thread.

    `make_engines` builds the serving engines (an `EnginePool` of `VLLMEngine`s) once, on that loop;
    `make_eval_engine` (optional) the gate's engine per cycle (default: a local engine per cycle).
    """

    def __init__(
        self,
        config: LearnerConfig,
        *,
        session_factory: Callable[[], Session],
        make_engines: Callable[[], Engine],
        make_eval_engine: Callable[[], Engine] | None = None,
        trainer: Trainer | None = None,
        holder: str | None = None,
        on_result: Callable[[CycleResult], None] | None = None,
        on_event: Callable[[CycleEvent], None] | None = None,
    ) -> None:
        self.config = config
        self.session_factory = session_factory
        self.make_engines = make_engines
        self.make_eval_engine = make_eval_engine
        self.trainer = trainer
        self.holder = holder
        self.on_result = on_result
        self.on_event = on_event
        self.results: list[CycleResult] = []
        self._engines: Engine | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rrr-learner-loop", daemon=True)
        self._thread.start()
        self._scheduler: BaseScheduler | None = None
        self._current: asyncio.Task[Any] | None = None

    def _submit(self, make: Callable[[], Awaitable[Any]]) -> Any:
        async def wrapped() -> Any:
            return await make()

        return asyncio.run_coroutine_threadsafe(wrapped(), self._loop).result()

    async def _cycle(self) -> CycleResult:
        if self._engines is None:
            self._engines = self.make_engines()
        eval_engine = self.make_eval_engine() if self.make_eval_engine is not None else None
        self._current = asyncio.current_task()
        return await run_cycle(
            self.config,
            session_factory=self.session_factory,
            engines=self._engines,
            eval_engine=eval_engine,
            trainer=self.trainer,
            holder=self.holder,
            on_event=self.on_event,
        )

    def tick(self) -> CycleResult:
        """Run one cycle now and wait for it. Never raises: a crash is a `failed` result."""
        try:
            result: CycleResult = self._submit(self._cycle)
        except concurrent.futures.CancelledError:  # shutdown stopped it; its run is marked interrupted
            result = CycleResult(status="failed", error="stopped by the shutdown; the next cycle resumes it")
        except Exception as exc:  # the scheduler must survive anything a cycle does
            log.exception("learner cycle crashed")
            result = CycleResult(status="failed", error=f"{type(exc).__name__}: {exc}")
        self.results.append(result)
        log.info("learner cycle: %s", result.status)
        if self.on_result is not None:
            try:
                self.on_result(result)
            except Exception:
                log.exception("on_result callback failed")
        return result

    def start(self, *, blocking: bool = False, run_now: bool = True) -> BaseScheduler:
        """Start ticking every `config.interval_s`; blocking runs until interrupted (then shuts down)."""
        self._scheduler = build_scheduler(
            self.tick,
            interval_s=self.config.interval_s,
            misfire_grace_s=self.config.misfire_grace_s,
            blocking=blocking,
            run_now=run_now,
        )
        if blocking:
            try:
                self._scheduler.start()
            except (KeyboardInterrupt, SystemExit):
                pass
            finally:
                self.shutdown()
        else:
            self._scheduler.start()
        return self._scheduler

    def shutdown(self, *, wait: bool = True) -> None:
        """Stop the schedule, close the engines and the loop thread. A running cycle is stopped
        (cancelled: its run is marked interrupted, the lease released) and waited for."""
        current = self._current
        if current is not None and not current.done() and self._loop.is_running():
            self._loop.call_soon_threadsafe(current.cancel)
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=wait)
        if self._loop.is_running():
            try:
                self._submit(cancel_background_unloads)
            except Exception:
                log.warning("cancelling pending adapter unloads failed", exc_info=True)
            if self._engines is not None:
                engines = self._engines
                try:
                    self._submit(engines.aclose)
                except Exception:
                    log.warning("closing the engines failed", exc_info=True)
                self._engines = None
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
