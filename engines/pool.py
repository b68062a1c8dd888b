"""Several engine replicas behind the one Engine interface, with a circuit breaker per replica.

The API serves through one pool. Chat requests go round-robin to replicas that are up. A replica
that fails ``failure_threshold`` times in a row (refused, dropped, timed out) is marked down: it
gets no traffic (the pool fails fast when all are down, R3) and is probed with ``health()`` every
``probe_interval_s``; traffic resumes as soon as a probe succeeds. A refused connection is retried
once on another replica (nothing was sent, R2); no other error is retried here — the agent loop is
the only retry. Adapter admin fans out to every replica (publishing loads everywhere).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from typing import Any

from engines.base import (
    ChatRequest,
    ChatResult,
    Engine,
    EngineProtocolError,
    EngineTimeout,
    EngineUnavailable,
)

log = logging.getLogger(__name__)


class _Replica:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.failures = 0
        self.down_since: float | None = None
        self.next_probe = 0.0

    @property
    def up(self) -> bool:
        return self.down_since is None


class EnginePool:
    """Round-robin over replicas that are up; fail fast when none is."""

    def __init__(
        self,
        engines: list[Engine],
        *,
        failure_threshold: int = 3,
        probe_interval_s: float = 1.0,
        probe_timeout_s: float = 2.0,
    ) -> None:
        if not engines:
            raise ValueError("an engine pool needs at least one engine")
        self.members = [_Replica(e) for e in engines]
        self.failure_threshold = failure_threshold
        self.probe_interval_s = probe_interval_s
        self.probe_timeout_s = probe_timeout_s
        self.name = engines[0].name
        self._order = itertools.cycle(range(len(engines)))
        self._probing: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def healthy(self) -> bool:
        """Whether some replica takes traffic (its circuit breaker is closed); no I/O."""
        return any(r.up for r in self.members)

    def replicas(self) -> list[Engine]:
        return [member.engine for member in self.members]

    def _mark_failure(self, replica: _Replica) -> None:
        replica.failures += 1
        if replica.up and replica.failures >= self.failure_threshold:
            replica.down_since = time.monotonic()
            replica.next_probe = replica.down_since + self.probe_interval_s
            log.warning(
                "engine replica %d marked down after %d failures", self.members.index(replica), replica.failures
            )

    def _mark_success(self, replica: _Replica) -> None:
        replica.failures = 0
        if not replica.up:
            log.info("engine replica %d is back", self.members.index(replica))
        replica.down_since = None

    def _schedule_probes(self) -> None:
        now = time.monotonic()
        for i, replica in enumerate(self.members):
            if replica.up or i in self._probing or now < replica.next_probe:
                continue
            self._probing.add(i)
            task = asyncio.get_running_loop().create_task(self._probe(i))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _probe(self, i: int) -> None:
        replica = self.members[i]
        try:
            ok = await asyncio.wait_for(replica.engine.health(), self.probe_timeout_s)
        except Exception:  # a probe failing is the expected case while the engine is down
            ok = False
        finally:
            self._probing.discard(i)
        if ok:
            self._mark_success(replica)
        else:
            replica.next_probe = time.monotonic() + self.probe_interval_s

    def _pick(self, exclude: set[int]) -> int | None:
        for _ in range(len(self.members)):
            i = next(self._order)
            if i not in exclude and self.members[i].up:
                return i
        return None

    async def chat(self, request: ChatRequest, *, timeout: float | None = None) -> ChatResult:
        self._schedule_probes()
        tried: set[int] = set()
        while True:
            i = self._pick(tried)
            if i is None:
                raise EngineUnavailable("no engine is available; retry shortly")
            tried.add(i)
            replica = self.members[i]
            try:
                result = await replica.engine.chat(request, timeout=timeout)
            except EngineUnavailable:
                self._mark_failure(replica)
                if len(tried) >= 2:  # at most one transport retry (R2)
                    raise
                continue
            except (EngineTimeout, EngineProtocolError):
                self._mark_failure(replica)
                raise
            self._mark_success(replica)
            return result

    async def load_adapter(self, name: str, path: str) -> None:
        """Load on every replica; the first failure is raised (callers treat that as "not published")."""
        await asyncio.gather(*(r.engine.load_adapter(name, path) for r in self.members))

    async def unload_adapter(self, name: str) -> None:
        results = await asyncio.gather(*(r.engine.unload_adapter(name) for r in self.members), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    async def list_models(self) -> list[dict[str, Any]]:
        """The model cards of the first replica that answers."""
        last: BaseException | None = None
        for replica in self.members:
            try:
                return await replica.engine.list_models()
            except Exception as exc:  # try the next replica
                last = exc
        raise EngineUnavailable(f"no engine answered: {type(last).__name__}")

    async def health(self) -> bool:
        results = await asyncio.gather(*(r.engine.health() for r in self.members), return_exceptions=True)
        for replica, ok in zip(self.members, results, strict=True):
            if ok is True:
                self._mark_success(replica)
        return any(ok is True for ok in results)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for replica in self.members:
            await replica.engine.aclose()
