"""What the routes share for the life of the app: settings, keys, engine pool, store, writer, resolver.

``api.app`` builds one ``AppState`` at startup and puts it on ``app.state.rrr``; routes reach it
with ``get_state(request)``. Besides holding things it owns three small pieces of logic:

* ``ModelResolver`` wraps the lead's ``agent.policy.PolicyResolver``: lookups run off the event
  loop, answers are cached for half the policy TTL, and while the database is unreachable the last
  known answers keep serving (R6) instead of every request waiting on a connect timeout.
* ``RecentEpisodes`` remembers which key created each recent episode, so feedback that arrives
  before the writer has stored the episode can wait for it, and only its owner (or an admin) may
  judge it.
* ``run_db`` runs a repository call in a worker thread inside one transaction and turns a
  database outage into a 503 that names no URL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from agent.loop import LoopConfig
from agent.policy import ALIAS, PolicyResolver, Resolved, UnknownModel
from api.auth import KeyRing
from api.errors import ApiError, database_unavailable
from api.metrics import Metrics
from api.settings import Settings
from engines.base import Engine
from store.writer import EpisodeWriter

log = logging.getLogger(__name__)
T = TypeVar("T")

DB_ERRORS: tuple[type[Exception], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.InternalError,
    sa_exc.TimeoutError,
    sa_exc.DisconnectionError,
    sa_exc.ProgrammingError,
)
DB_RETRY_S = 2.0
MAX_CACHED_NAMES = 1024
_DB_DOWN = object()


class ModelResolver:
    """Client model name → Resolved, cached briefly, surviving a database outage on stale answers."""

    def __init__(self, policy: PolicyResolver, *, ttl_s: float) -> None:
        self.policy = policy
        self.ttl_s = ttl_s
        self._cache: dict[str | None, tuple[float, Resolved | None]] = {}
        self._pending: dict[str | None, asyncio.Future[object]] = {}
        self._db_down_until = 0.0

    def invalidate(self) -> None:
        self._cache.clear()
        self.policy.invalidate()

    @property
    def base_model(self) -> str:
        return self.policy.base_model

    def _lookup(self, name: str | None) -> Resolved | None:
        try:
            return self.policy.resolve(name)
        except UnknownModel:
            return None

    def _fallback(self, name: str | None) -> Resolved:
        cached = self._cache.get(name)
        if cached is not None and cached[1] is not None:
            return cached[1]
        if name in (None, "", ALIAS, self.policy.base_model):
            return Resolved(engine_model=self.policy.base_model, adapter=None)
        raise database_unavailable()

    async def _refresh(self, key: str | None) -> object:
        """One lookup per name at a time; concurrent callers share it. ``_DB_DOWN`` if it failed."""
        pending = self._pending.get(key)
        if pending is not None:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                if pending.cancelled():
                    return _DB_DOWN
                raise
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        value: object = _DB_DOWN
        try:
            value = await run_in_threadpool(self._lookup, key)
            if len(self._cache) >= MAX_CACHED_NAMES:
                self._cache.clear()
            self._cache[key] = (time.monotonic(), value if isinstance(value, Resolved) else None)
        except DB_ERRORS as exc:
            log.warning("model lookup failed, serving the last known policy: %s", type(exc).__name__)
            self._db_down_until = time.monotonic() + DB_RETRY_S
        finally:
            self._pending.pop(key, None)
            if not future.done():
                future.set_result(value)
        return value

    async def resolve(self, name: str | None) -> Resolved:
        """The engine model for ``name``; ApiError 404 for an unknown name, 503 if it cannot be known."""
        key = name or None
        now = time.monotonic()
        cached = self._cache.get(key)
        value: object
        if cached is not None and now - cached[0] < self.ttl_s:
            value = cached[1]
        elif now < self._db_down_until:
            return self._fallback(key)
        else:
            value = await self._refresh(key)
            if value is _DB_DOWN:
                return self._fallback(key)
        if not isinstance(value, Resolved):
            raise ApiError(
                404,
                f"The model `{name}` does not exist; GET /v1/models lists the models.",
                param="model",
                code="model_not_found",
            )
        return value

    async def models(self) -> list[dict[str, Any]]:
        try:
            return await run_in_threadpool(self.policy.models)
        except DB_ERRORS:
            raise database_unavailable() from None


class RecentEpisodes:
    """A bounded map episode id → creating key id, for feedback that races the writer."""

    def __init__(self, size: int = 50_000) -> None:
        self.size = size
        self._items: OrderedDict[str, str | None] = OrderedDict()

    def add(self, episode_id: str, key_id: str | None) -> None:
        self._items[episode_id] = key_id
        if len(self._items) > self.size:
            self._items.popitem(last=False)

    def __contains__(self, episode_id: object) -> bool:
        return episode_id in self._items

    def owner(self, episode_id: str) -> str | None:
        return self._items.get(episode_id)


@dataclass
class AppState:
    """Everything the routes use; built by ``api.app`` at startup."""

    settings: Settings
    keys: KeyRing
    metrics: Metrics
    engine: Engine
    session_factory: sessionmaker[Session]
    writer: EpisodeWriter
    models: ModelResolver
    loop_config: LoopConfig
    recent: RecentEpisodes = field(default_factory=RecentEpisodes)
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)
    draining: bool = False

    def engine_up(self) -> bool:
        """True while some replica takes traffic (the pool's circuit breakers), without any I/O."""
        return self.engine.healthy()

    def track(self, task: asyncio.Task[T]) -> asyncio.Task[T]:
        """Keep a reference to an episode task until it ends, so shutdown can drain it (R4)."""
        self.tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("episode task failed", exc_info=task.exception())


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.rrr
    return state


async def run_db(state: AppState, work: Callable[[Session], T], *, dry_run: bool = False) -> T:
    """Run ``work(session)`` in one transaction in a worker thread; an outage becomes a 503.

    With ``dry_run`` the transaction is rolled back instead of committed (to plan a change).
    """

    def call() -> T:
        if dry_run:
            with state.session_factory() as session:
                try:
                    return work(session)
                finally:
                    session.rollback()
        with state.session_factory.begin() as session:
            return work(session)

    try:
        return await run_in_threadpool(call)
    except DB_ERRORS as exc:
        log.warning("database call failed: %s", type(exc).__name__)
        raise database_unavailable() from None
