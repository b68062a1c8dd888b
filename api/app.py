"""The FastAPI application: ``create_app(settings)`` wires routers, auth, errors, metrics and a lifespan.

Called by ``rrr serve`` (and tests, which may pass their own engine, session factory or writer;
what is passed in is not closed here). Startup builds what was not passed: the store (the
SQLite files are migrated with Alembic; other URLs only with ``auto_migrate``, and
startup refuses a schema that is not at the newest revision), the
episode writer with its spool under the data dir, and an ``EnginePool`` over ``VLLMEngine``s for
``engine_urls`` or one in-process ``LocalEngine`` for ``model``. The base model's public name is
``base_model_name`` or asked from the engines. Startup refuses to serve without keys on anything
but loopback (R13).

Shutdown (R4): uvicorn stops accepting and waits for in-flight requests; then new chat requests
are refused, running episodes are awaited (up to ``shutdown_drain_s``), the writer is flushed
and closed, and the engines and database connections are released.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from sqlalchemy.orm import Session, sessionmaker

from agent.loop import LoopConfig
from agent.policy import PolicyResolver
from api.auth import KeyRing, check_bind
from api.errors import install_error_handlers
from api.metrics import Metrics, MetricsMiddleware
from api.routes import adapters, chat, episodes, health, models, responses, runs, stats, verifiers
from api.settings import Settings
from api.state import AppState, ModelResolver
from engines.base import Engine, EngineError
from engines.pool import EnginePool
from engines.vllm import VLLMEngine
from store.db import make_engine, make_session_factory, schema_state, upgrade
from store.writer import EpisodeWriter, SpoolInUse

log = logging.getLogger(__name__)

ROUTERS = (
    chat.router,
    responses.router,
    models.router,
    episodes.feedback_router,
    episodes.router,
    stats.router,
    runs.router,
    adapters.router,
    verifiers.router,
    health.router,
)


class StartupError(RuntimeError):
    """The app cannot start as configured; the message says what to change."""


def _version() -> str:
    try:
        return version("rrr")
    except PackageNotFoundError:
        return "0.0.0"


async def _build_engine(settings: Settings) -> tuple[Engine, str | None]:
    """The engine pool from the settings, and the base model's name when it is known without asking."""

    def pool(engines: list[Engine]) -> EnginePool:
        return EnginePool(
            engines,
            failure_threshold=settings.engine_failure_threshold,
            probe_interval_s=settings.engine_probe_interval_s,
        )

    if settings.engine_urls:
        engines: list[Engine] = [
            VLLMEngine(
                url,
                settings.engine_api_key,
                timeout=settings.engine_timeout_s,
                connect_timeout=settings.engine_connect_timeout_s,
                name=f"engine-{i}",
            )
            for i, url in enumerate(settings.engine_urls)
        ]
        return pool(engines), settings.base_model_name
    if settings.model:
        from engines.local import LocalEngine  # torch is imported lazily inside

        name = settings.base_model_name or Path(settings.model).name
        try:
            local = await asyncio.to_thread(
                LocalEngine,
                settings.model,
                device=settings.local_device,
                served_name=name,
                enable_lora=True,
                name="local",
                tool_call_parser=settings.tool_call_parser,
            )
        except ImportError as exc:
            raise StartupError(
                f"the local engine needs the ml extra ({exc.name}); install with: "
                "pip install -e '.[ml]', or serve through --engine-url"
            ) from None
        except Exception as exc:
            raise StartupError(f"could not load the model: {type(exc).__name__}") from exc
        return pool([local]), name
    raise StartupError("no engine configured: set RRR_ENGINE_URLS (vLLM or `rrr engine serve` URLs) or RRR_MODEL")


async def _discover_base_model(engine: Engine, timeout_s: float) -> str:
    """The first base model (``parent`` null) the engines list, waiting for them to come up."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            for card in await engine.list_models():
                if card.get("parent") is None and isinstance(card.get("id"), str):
                    return str(card["id"])
        except EngineError:
            pass
        if time.monotonic() >= deadline:
            raise StartupError(
                f"no engine listed a base model within {timeout_s:g}s; start the engines first "
                "or set RRR_BASE_MODEL_NAME"
            )
        await asyncio.sleep(0.5)


async def build_state(
    settings: Settings,
    metrics: Metrics,
    closers: list[Callable[[], object]],
    *,
    engine: Engine | None,
    session_factory: sessionmaker[Session] | None,
    writer: EpisodeWriter | None,
) -> AppState:
    """Everything the routes need; ``closers`` collects what shutdown must release (in reverse)."""
    check_bind(settings.host, auth_enabled=settings.auth_enabled)
    if session_factory is None:
        url = settings.resolved_database_url()
        if settings.embedded_database:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        # SQLite files are migrated by default (one process owns them); shared servers only on request.
        sqlite = url.startswith("sqlite")
        migrate = settings.auto_migrate if settings.auto_migrate is not None else sqlite
        bounds: dict[str, Any] = {
            "connect_timeout_s": settings.db_connect_timeout_s,
            "statement_timeout_s": settings.db_statement_timeout_s,
            "pool_timeout_s": settings.db_pool_timeout_s,
        }
        if migrate:
            await asyncio.to_thread(upgrade, url)
        elif await asyncio.to_thread(schema_state, url, **bounds) == "outdated":  # unreachable: degraded (R6)
            raise StartupError(
                "the database schema is missing or out of date: run `rrr db upgrade "
                "--database-url ...` first (or set RRR_AUTO_MIGRATE=true)"
            )
        db_engine = make_engine(url, **bounds)
        closers.append(db_engine.dispose)
        session_factory = make_session_factory(db_engine)
    if writer is None:
        try:
            writer = EpisodeWriter(
                session_factory,
                settings.resolved_spool_path(),
                max_queue=settings.writer_max_queue,
                batch_size=settings.writer_batch_size,
                write_timeout_s=settings.db_write_timeout_s,
            )
        except SpoolInUse:
            raise StartupError(
                "another rrr process uses the same episode spool; give each process its own RRR_SPOOL_PATH (or port)"
            ) from None
        owned_writer = writer
        closers.append(lambda: asyncio.to_thread(owned_writer.close, 30.0))
    base_model = settings.base_model_name
    if engine is None:
        engine, base_model = await _build_engine(settings)
        owned_engine = engine
        closers.append(owned_engine.aclose)
    if base_model is None:
        base_model = await _discover_base_model(engine, settings.engine_startup_timeout_s)
    policy = PolicyResolver(session_factory, base_model, ttl_s=settings.policy_ttl_s / 2)
    resolver = ModelResolver(policy, ttl_s=settings.policy_ttl_s / 2)
    await resolver.start()  # the first snapshot; re-read in the background from now on (R6)
    closers.append(resolver.aclose)
    loop_config = LoopConfig(
        max_calls=settings.max_calls,
        deadline_s=settings.deadline_s,
        reflection_with_reason=settings.reflection_with_reason,
        reflection_max_tokens=settings.reflection_max_tokens,
        verify_budget_s=settings.verify_budget_s,
        verify_regex_budget_s=settings.verify_regex_budget_s,
        verify_workers=settings.verify_workers,
        tool_call_parser=settings.tool_call_parser,
    )
    state = AppState(
        settings=settings,
        keys=KeyRing(settings.api_keys, settings.admin_keys),
        metrics=metrics,
        engine=engine,
        session_factory=session_factory,
        writer=writer,
        models=resolver,
        loop_config=loop_config,
        policy=settings.verifier_policy(),
    )
    metrics.attach(writer.stats, state.engine_up)
    return state


async def drain(state: AppState, closers: list[Callable[[], object]]) -> None:
    """R4: refuse new work, await running episodes, flush the writer, release everything."""
    state.draining = True
    if state.tasks:
        await asyncio.wait(set(state.tasks), timeout=state.settings.shutdown_drain_s)
    await asyncio.to_thread(state.writer.flush, 30.0)
    for close in reversed(closers):
        try:
            result = close()
            if asyncio.iscoroutine(result):
                await result
        except Exception:  # shutdown goes on; what failed is in the log
            log.exception("error while shutting down")


def create_app(
    settings: Settings,
    *,
    engine: Engine | None = None,
    session_factory: sessionmaker[Session] | None = None,
    writer: EpisodeWriter | None = None,
) -> FastAPI:
    """The rrr API for ``settings``; pass ``engine``/``session_factory``/``writer`` to supply your own."""
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        closers: list[Callable[[], object]] = []
        try:
            state = await build_state(
                settings, metrics, closers, engine=engine, session_factory=session_factory, writer=writer
            )
        except BaseException as exc:
            app.state.startup_error = exc  # `rrr serve` prints it as one line
            for close in reversed(closers):
                result = close()
                if asyncio.iscoroutine(result):
                    await result
            raise
        app.state.rrr = state
        log.info("rrr API ready (base model %s)", state.models.base_model)
        try:
            yield
        finally:
            await drain(state, closers)

    app = FastAPI(
        title="rrr",
        summary="A self-improving tool-calling backend: verified tool calls, reflection and retry.",
        version=_version(),
        lifespan=lifespan,
        docs_url="/docs" if settings.docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.docs else None,
    )
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type"],
        )
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
