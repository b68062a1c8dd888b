"""What the routes share for the life of the app: settings, keys, engine pool, store, writer, resolver.

``api.app`` builds one ``AppState`` at startup and puts it on ``app.state.rrr``; routes reach it
with ``get_state(request)``. Besides holding things it owns three small pieces of logic:

* ``ModelResolver`` wraps the lead's ``agent.policy.PolicyResolver``: the registry is re-read in
  the background every half policy TTL, and requests are resolved from the last snapshot read, so
  the request path never waits on the database for what it can know — while the database is slow,
  stalled or unreachable the last known policy keeps serving (R6).
* ``RecentEpisodes`` remembers which key created each recent episode, so feedback that arrives
  before the writer has stored the episode can wait for it, and only its owner (or an admin) may
  judge it.
* ``run_db`` runs a repository call in a worker thread inside one transaction and turns a
  database outage into a 503 that names no URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
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
from agent.policy import ALIAS, PolicyResolver, Resolved, Snapshot, UnknownModel
from api.auth import KeyRing
from api.errors import ApiError, database_unavailable
from api.metrics import Metrics
from api.settings import Settings
from engines.base import Engine
from store.writer import EpisodeWriter
from tools.verifiers.policy import VerifierPolicy

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
DB_RETRY_S = 2.0  # after a failed read, names the snapshot does not know are a 503 at once for this long
RESOLVE_WAIT_S = 2.0  # the most a request for a name the snapshot does not know waits for a fresh read
RELOAD_WAIT_S = 10.0  # the most an admin flip waits for the registry to be read again
MIN_REFRESH_S = 0.1  # the background refresh interval even with a zero policy TTL


class ModelResolver:
    """Client model name → Resolved, from the policy's latest snapshot, re-read in the background.

    Every ``ttl_s`` a daemon thread reads the registry (one read at a time: a read that stalls is
    waited for, never stacked up); a request is answered from the latest snapshot without I/O
    when it knows the name (the alias, the base, a registered adapter), however old the snapshot is
    once the database fails. Before any read succeeded the alias and the base name serve the base
    model. A name the snapshot does not know may be an adapter registered since: unless the
    snapshot is younger than ``ttl_s`` (then it is a 404 at once), the request waits for one read
    that starts after it, shared with the others, at most ``RESOLVE_WAIT_S``; a 503 if that read
    fails or is late. The admin routes that flip the active adapter ``reload`` before answering.
    """

    def __init__(self, policy: PolicyResolver, *, ttl_s: float) -> None:
        self.policy = policy
        self.ttl_s = ttl_s
        self._reading: asyncio.Future[bool] | None = None
        self._read_started = 0.0
        self._db_down_until = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def base_model(self) -> str:
        return self.policy.base_model

    async def start(self) -> None:
        """The first read (awaited, bounded by the store's own timeouts), then the background refresh."""
        await asyncio.shield(self._start_read())
        self._task = asyncio.get_running_loop().create_task(self._refresh_forever(), name="rrr-policy-refresh")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(max(self.ttl_s, MIN_REFRESH_S))
            try:
                await asyncio.shield(self._start_read())  # a stalled read is waited for, not doubled
            except Exception:  # the refresh must outlive anything; requests keep the last snapshot
                log.exception("model registry refresh failed")

    def _start_read(self) -> asyncio.Future[bool]:
        """The read in progress, or a new one on a daemon thread; its future says whether it succeeded."""
        if self._reading is not None and not self._reading.done():
            return self._reading
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()

        def settle(ok: bool) -> None:
            if not ok:
                self._db_down_until = time.monotonic() + DB_RETRY_S
            if not future.done():
                future.set_result(ok)

        def read() -> None:
            ok = False
            try:
                self.policy.read()
                ok = True
            except DB_ERRORS as exc:
                log.warning("model registry read failed, serving the last known policy: %s", type(exc).__name__)
            except Exception:
                log.exception("model registry read failed, serving the last known policy")
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                loop.call_soon_threadsafe(settle, ok)

        self._reading, self._read_started = future, time.monotonic()
        threading.Thread(target=read, name="rrr-policy-read", daemon=True).start()
        return future

    async def _fresh(self, after: float, wait_s: float) -> bool:
        """Whether a read that started at ``after`` or later succeeded within ``wait_s``."""
        deadline = time.monotonic() + wait_s
        while True:
            future = self._start_read()
            started = self._read_started
            try:
                ok = await asyncio.wait_for(asyncio.shield(future), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return False
            if not ok or started >= after:
                return ok

    async def reload(self) -> None:
        """Read the registry again now (after an adapter flip), at most ``RELOAD_WAIT_S``."""
        if not await self._fresh(time.monotonic(), RELOAD_WAIT_S):
            log.warning("the model registry could not be read again; the flip serves within the policy TTL")

    def _known(self, key: str | None, snap: Snapshot | None) -> Resolved | None:
        if snap is None:
            if key in (None, ALIAS, self.policy.base_model):
                return Resolved(engine_model=self.policy.base_model, adapter=None)
            return None
        try:
            return self.policy.resolve(key, snap)
        except UnknownModel:
            return None

    async def resolve(self, name: str | None) -> Resolved:
        """The engine model for ``name``; ApiError 404 for an unknown name, 503 if it cannot be known."""
        key = name or None
        asked = time.monotonic()
        snap = self.policy.latest
        known = self._known(key, snap)
        if known is not None:
            return known
        if snap is None or asked - snap.taken >= self.ttl_s:
            if asked < self._db_down_until or not await self._fresh(asked, RESOLVE_WAIT_S):
                raise database_unavailable()
            known = self._known(key, self.policy.latest)
            if known is not None:
                return known
        raise ApiError(
            404,
            f"The model `{name}` does not exist; GET /v1/models lists the models.",
            param="model",
            code="model_not_found",
        )

    async def models(self) -> list[dict[str, Any]]:
        """The model cards of the latest snapshot; a 503 when none could be read yet."""
        snap = self.policy.latest
        if snap is None:
            if time.monotonic() < self._db_down_until or not await self._fresh(time.monotonic(), RESOLVE_WAIT_S):
                raise database_unavailable()
            snap = self.policy.latest
        return self.policy.models(snap)


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
    policy: VerifierPolicy = field(default_factory=VerifierPolicy)
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
