"""The vLLM-compatible HTTP server over the local engine: what `rrr engine serve` runs.

Who calls it: the CLI (`rrr engine serve`) and tests, through `create_app(engine, ...)`. It meets the
conformance checklist of docs/vllm.md §8: `/health`, `/ping`, `/version`, `/load`,
`/metrics`, `/v1/models`, `/v1/chat/completions` (JSON and SSE) and, only with runtime LoRA
updating on, `/v1/load_lora_adapter` and `/v1/unload_lora_adapter`, with vLLM 0.33's bodies,
statuses, messages and check order. Engine work runs in worker threads, one generation at a time
(queued requests count as waiting in the metrics), so the event loop stays free.

Requests nobody waits for are dropped, as vLLM aborts them (R3): when a client disconnects, a
running generation, streamed or not, stops at its next token and a queued request leaves the queue
without generating. The queue is bounded: with `max_waiting_requests` requests waiting, one more is
a 503 `ServiceUnavailableError` with `Retry-After` at once (rrr's client reads it as "overloaded").

What it leaves to the engine: prompt rendering, generation, the tool-call parse and the non-streaming
response body (`LocalEngine.chat`), adapter validation on disk. What it adds: model routing over its
own adapter registry (registry-only unload, in-place reload, `server.registry`), auth, streaming
frames (`server.stream`), errors (`server.errors`) and metrics (`server.metrics`).

Deliberate differences from vLLM: requests already running on a name keep their weights when the
name is reloaded in place (vLLM switches them at the next decode step); `n > 1` and constrained
decoding are not supported; adapters that nothing uses any more are dropped from the engine.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from engines.base import AdapterError, ChatRequest, EngineError, EngineRequestError
from engines.local import GenerationOutput, LocalEngine
from engines.server.errors import ServerError, bad_request, install_error_handlers
from engines.server.metrics import CONTENT_TYPE_LATEST, EngineLoad, ServerMetrics
from engines.server.protocol import BearerAuth, ChatBody, LoadLoRABody, UnloadLoRABody, require_json
from engines.server.registry import LoraEntry, LoraRegistry
from engines.server.stream import ChatStream
from engines.wire import check_tool_request
from tools.toolcall_formats import DEFAULT_TOOL_CALL_PARSER, tool_call_format

log = logging.getLogger(__name__)

VLLM_VERSION = "0.33.0"
DEFAULT_MAX_WAITING = 16
RETRY_AFTER_S = "1"
CLIENT_CLOSED = 499
"""The status of a request whose client went away (nginx's "client closed request"); never delivered."""
_END = object()

ClientGone = Callable[[], Awaitable[None]]
"""Returns once the client of the request being handled has disconnected."""


def until_disconnected(receive: Receive) -> ClientGone:
    """A `ClientGone` over the ASGI `receive` of a request whose body has been read.

    uvicorn answers `receive()` with `http.disconnect` once the connection is lost (and from then on);
    until then it waits. Waiting for it must stop before the response starts, which reads it too.
    """

    async def gone() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    return gone


async def _first(work: asyncio.Future[Any], gone: asyncio.Future[None] | None) -> bool:
    """Wait for `work`, or for the client to go: True if `work` is done. Cancelled, it cancels `work`."""
    try:
        await asyncio.wait({work} if gone is None else {work, gone}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        work.cancel()
        raise
    return work.done()


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark the outcome of a task nobody awaits any more as seen (no "never retrieved" warning)."""
    if not task.cancelled():
        task.exception()


@dataclass
class ServeConfig:
    """How the server behaves; the CLI fills it from flags and vLLM's environment variables.

    legacy_errors: answer errors in the pre-0.10.1 flat shape `{"object":"error",...}`.
    always_tool_calls: send `message.tool_calls: []` when there are none (vLLM 0.22 style).
    add_lora_delay_s: injected latency of every adapter load, to exercise clients' timeouts.
    max_waiting_requests: most chat requests waiting behind the running one; one more is a 503.
    """

    served_model_names: list[str]
    model: str
    enable_lora: bool = False
    allow_runtime_lora_updating: bool = False
    api_key: str | None = None
    max_loras: int = 1
    enable_auto_tool_choice: bool = True
    legacy_errors: bool = False
    always_tool_calls: bool = False
    add_lora_delay_s: float = 0.0
    max_waiting_requests: int = DEFAULT_MAX_WAITING


def _server_error(exc: BaseException | None) -> ServerError:
    """An engine failure in vLLM's terms: request errors keep their status, the rest are 500s."""
    if isinstance(exc, EngineRequestError):
        return ServerError(exc.status, exc.message, exc.type or "BadRequestError", exc.param)
    if not isinstance(exc, EngineError):
        log.error("generation failed", exc_info=exc)
    return ServerError(500, str(exc) or type(exc).__name__, "InternalServerError")


def model_permission() -> dict[str, Any]:
    return {
        "id": "modelperm-" + os.urandom(8).hex(),
        "object": "model_permission",
        "created": int(time.time()),
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }


@dataclass
class _Route:
    """Where a request goes: the base model or a pinned adapter, and the name the response echoes."""

    echo: str
    entry: LoraEntry | None = None
    engine_key: str | None = None

    @property
    def adapter(self) -> str:
        """The adapter name for the LoRA metric ("" for the base model)."""
        return self.echo if self.entry is not None else ""


@dataclass
class _Scheduler:
    """One generation at a time; the counts feed `/metrics`."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    running: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)
    changed_at: float = field(default_factory=time.time)


class EngineServer:
    """State and handlers of one server: the engine, the adapter registry, the scheduler, metrics."""

    def __init__(self, engine: LocalEngine, config: ServeConfig) -> None:
        if not config.served_model_names:
            raise ValueError("at least one served model name is needed")
        self.engine = engine
        self.config = config
        self.base = config.served_model_names[0]
        self.registry = LoraRegistry()
        self.scheduler = _Scheduler()
        self.metrics = ServerMetrics(self.base, self._load)
        self._tasks: set[asyncio.Task[None]] = set()

    # --- scheduling and adapter lifetimes ---

    def _load(self) -> EngineLoad:
        s = self.scheduler
        return EngineLoad(
            running=len(s.running),
            waiting=len(s.waiting),
            running_adapters=sorted({n for n in s.running if n}),
            waiting_adapters=sorted({n for n in s.waiting if n}),
            max_loras=self.config.max_loras,
            changed_at=s.changed_at,
        )

    async def _acquire_slot(self, adapter: str, gone: asyncio.Future[None] | None = None) -> bool:
        """Take the generation slot: True once held, False if the client went away while waiting.

        With `max_waiting_requests` already waiting, a request that would wait is a 503 at once.
        """
        s = self.scheduler
        if s.lock.locked() and len(s.waiting) >= self.config.max_waiting_requests:
            self.metrics.reject("queue_full")
            raise ServerError(
                503,
                f"The engine's queue is full ({len(s.waiting)} requests waiting); retry shortly.",
                "ServiceUnavailableError",
                headers={"Retry-After": RETRY_AFTER_S},
            )
        s.waiting.append(adapter)
        s.changed_at = time.time()
        acquire = asyncio.ensure_future(s.lock.acquire())
        try:
            if not await _first(acquire, gone):
                acquire.cancel()  # asyncio.Lock hands a wake-up it can no longer use to the next waiter
                await asyncio.wait({acquire})
        except BaseException:
            acquire.cancel()
            if acquire.done() and not acquire.cancelled() and acquire.exception() is None:
                s.lock.release()  # it got the lock as this request was being cancelled
            raise
        finally:
            s.waiting.remove(adapter)
        if acquire.cancelled():
            self.metrics.abort("waiting")
            s.changed_at = time.time()
            return False
        acquire.result()
        s.running.append(adapter)
        s.changed_at = time.time()
        if gone is not None and gone.done():  # it went just as its turn came
            self._release_slot(adapter)
            self.metrics.abort("waiting")
            return False
        return True

    def _release_slot(self, adapter: str) -> None:
        s = self.scheduler
        s.running.remove(adapter)
        s.changed_at = time.time()
        s.lock.release()

    def route(self, model: str | None) -> _Route:
        """§2.7: empty -> base, a base name, a registered adapter (pinned), else 404."""
        if not model or model in self.config.served_model_names:
            return _Route(echo=self.base)
        entry = self.registry.get(model)
        if entry is None:
            aliases = ", ".join(self.config.served_model_names)
            raise ServerError(
                404, f"The model `{model}` does not exist. Valid aliases: {aliases}.", "NotFoundError", "model"
            )
        return _Route(echo=entry.name, entry=entry, engine_key=self.registry.acquire(entry))

    def unpin(self, route: _Route) -> None:
        if route.engine_key is not None and self.registry.release(route.engine_key):
            self._drop_later(route.engine_key)

    def _drop_later(self, key: str) -> None:
        """Unload a key nothing uses any more from the engine, off the request path."""

        async def drop() -> None:
            try:
                if self.registry.is_stale(key):
                    await self.engine.unload_adapter(key)
            except Exception:  # a leak is logged, never fatal
                log.warning("could not drop adapter %s from the engine", key, exc_info=True)

        task = asyncio.get_running_loop().create_task(drop())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- LoRA admin (§2.2, §2.3) ---

    async def load_lora(self, body: LoadLoRABody) -> Response:
        name, path = body.lora_name, body.lora_path
        if not name or not path:
            raise ServerError(400, "Both 'lora_name' and 'lora_path' must be provided.", "InvalidUserInput")
        if name in self.config.served_model_names:
            raise ServerError(400, f"The lora adapter '{name}' conflicts with a served base model.", "InvalidUserInput")
        async with self.registry.lock(name):
            if name in self.registry and not body.load_inplace:
                raise ServerError(
                    400,
                    f"The lora adapter '{name}' has already been loaded. If you want to load "
                    "the adapter in place, set 'load_inplace' to True.",
                    "InvalidUserInput",
                )
            if not self.config.enable_lora:
                raise ServerError(
                    500,
                    "Call to add_lora method failed: LoRA is not enabled. Use --enable-lora to enable LoRA.",
                    "InternalServerError",
                )
            if self.config.add_lora_delay_s > 0:
                await asyncio.sleep(self.config.add_lora_delay_s)
            key = self.registry.new_engine_key(name)
            try:
                await self.engine.load_adapter(key, _resolve_adapter_path(path))
            except AdapterError as exc:
                raise ServerError(exc.status, exc.message.replace(key, name), exc.type, exc.param) from None
            _, previous = self.registry.put(name, path, self.base, key)
            if previous is not None and self.registry.is_stale(previous):
                self._drop_later(previous)
        return Response(content=f"Success: LoRA adapter '{name}' added successfully.", status_code=200)

    async def unload_lora(self, body: UnloadLoRABody) -> Response:
        name = body.lora_name
        if not name:
            raise ServerError(400, "'lora_name' needs to be provided to unload a LoRA adapter.", "InvalidUserInput")
        entry = self.registry.remove(name)
        if entry is None:
            raise ServerError(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
        if self.registry.is_stale(entry.engine_key):
            self._drop_later(entry.engine_key)
        return Response(content=f"Success: LoRA adapter '{name}' removed successfully.", status_code=200)

    def models(self) -> dict[str, Any]:
        """§2.5: base cards in served-name order, then adapters in registry order."""
        now = int(time.time())
        cards = [
            {
                "id": name,
                "object": "model",
                "created": now,
                "owned_by": "vllm",
                "root": self.config.model,
                "parent": None,
                "max_model_len": self.engine.max_model_len,
                "permission": [model_permission()],
            }
            for name in self.config.served_model_names
        ]
        cards += [
            {
                "id": e.name,
                "object": "model",
                "created": now,
                "owned_by": "vllm",
                "root": e.path,
                "parent": e.parent,
                "max_model_len": None,
                "permission": [model_permission()],
            }
            for e in self.registry.entries()
        ]
        return {"object": "list", "data": cards}

    # --- chat (§3) ---

    def _check_request(self, body: ChatBody) -> str | dict[str, Any]:
        """Request validation in vLLM's order; returns the effective tool_choice."""
        if body.stream_options and not body.stream:
            raise bad_request("Stream options can only be defined when `stream=True`.", "stream_options")
        if body.n is not None and body.n != 1:
            raise bad_request("rrr engine serve generates one choice per request; `n` must be 1.", "n")
        try:
            return check_tool_request(body.tools, body.tool_choice)
        except EngineRequestError as exc:
            raise _server_error(exc) from None

    def _check_tool_flags(self, body: ChatBody, tool_choice: str | dict[str, Any]) -> None:
        if self.config.enable_auto_tool_choice or not body.tools or tool_choice == "none":
            return
        if tool_choice == "auto":
            raise ServerError(
                400,
                '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set',
                "BadRequestError",
            )
        label = (
            f'"{tool_choice}"'
            if isinstance(tool_choice, str)
            else f'function "{(tool_choice.get("function") or {}).get("name")}"'
        )
        raise ServerError(400, f"tool_choice={label} requires --tool-call-parser to be set", "BadRequestError")

    def _chat_request(self, body: ChatBody, route: _Route) -> ChatRequest:
        stop = [body.stop] if isinstance(body.stop, str) else body.stop
        extra = {
            k: v
            for k, v in (
                ("max_completion_tokens", body.max_completion_tokens),
                ("top_k", body.top_k),
                ("repetition_penalty", body.repetition_penalty),
            )
            if v is not None
        }
        return ChatRequest(
            messages=body.messages,
            model=route.engine_key,
            tools=body.tools,
            tool_choice=body.tool_choice,
            temperature=body.temperature,
            top_p=body.top_p,
            max_tokens=body.max_tokens,
            seed=body.seed,
            stop=stop,
            parallel_tool_calls=body.parallel_tool_calls,
            extra=extra,
        )

    async def chat(self, body: ChatBody, client_gone: ClientGone | None = None) -> Response:
        """One chat completion; `client_gone` (the HTTP route passes one) lets a departed client's work go."""
        tool_choice = self._check_request(body)
        route = self.route(body.model)
        gone = None if client_gone is None else asyncio.ensure_future(client_gone())
        if gone is not None:
            gone.add_done_callback(_retrieve)
        try:
            if body.stream:
                return await self._stream(body, route, tool_choice, gone)  # the stream owns the pin
            try:
                self._check_tool_flags(body, tool_choice)
                return await self._complete(body, route, gone)
            finally:
                self.unpin(route)
        finally:
            if gone is not None:
                gone.cancel()

    async def _complete(self, body: ChatBody, route: _Route, gone: asyncio.Future[None] | None) -> Response:
        started = time.perf_counter()
        if not await self._acquire_slot(route.adapter, gone):
            return Response(status_code=CLIENT_CLOSED)
        cancel = threading.Event()
        try:
            work = asyncio.ensure_future(self.engine.chat(self._chat_request(body, route), cancel=cancel))
            if not await _first(work, gone):
                cancel.set()  # the client went away: the generation stops at its next token
                self.metrics.abort("running")
                await asyncio.wait({work})  # the slot is free once it has stopped
                _retrieve(work)
                return Response(status_code=CLIENT_CLOSED)
            result = work.result()
        except EngineError as exc:
            raise _server_error(exc) from None
        finally:
            self._release_slot(route.adapter)
        raw = dict(result.raw)
        raw["model"] = route.echo
        message = raw["choices"][0]["message"]
        if self.config.always_tool_calls:
            message.setdefault("tool_calls", [])
        # vLLM counts the engine's reason: a parsed tool call finished with "stop".
        engine_reason = "stop" if result.finish_reason == "tool_calls" else result.finish_reason
        self.metrics.observe(
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
            finish_reason=engine_reason,
            seconds=time.perf_counter() - started,
        )
        return JSONResponse(raw)

    async def _stream(
        self, body: ChatBody, route: _Route, tool_choice: str | dict[str, Any], gone: asyncio.Future[None] | None
    ) -> Response:
        """Start generating; answer with SSE once the first text (or the end) arrives.

        A failure before any output (prompt too long, bad sampling values) is still a JSON error
        with its status; after that it becomes an error frame. A client that goes away before the
        first text is dropped here; after it, the response stops the generation when it ends first.
        """
        engine, started = self.engine, time.perf_counter()
        parse_tools = bool(body.tools) and tool_choice != "none"
        try:
            self._check_tool_flags(body, tool_choice)
            prompt = await asyncio.to_thread(lambda: engine.encode(engine.render_prompt(body.messages, body.tools)))
            acquired = await self._acquire_slot(route.adapter, gone)
        except BaseException as exc:
            self.unpin(route)
            if isinstance(exc, EngineError):
                raise _server_error(exc) from None
            raise
        if not acquired:
            self.unpin(route)
            return Response(status_code=CLIENT_CLOSED)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        cancel = threading.Event()
        timeout = engine.timeout

        def push(delta: str) -> None:  # called from the generation thread
            loop.call_soon_threadsafe(queue.put_nowait, delta)

        parser = getattr(engine, "tool_call_parser", DEFAULT_TOOL_CALL_PARSER)
        tool_format = tool_call_format(parser)
        work = functools.partial(
            engine.generate,
            prompt,
            adapter=route.engine_key,
            max_tokens=body.max_tokens if body.max_tokens is not None else body.max_completion_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            repetition_penalty=body.repetition_penalty,
            seed=body.seed,
            stop=[body.stop] if isinstance(body.stop, str) else body.stop,
            skip_special_tokens=not (parse_tools and tool_format.keeps_special_tokens),
            cancel=cancel,
            deadline=None if timeout is None else time.monotonic() + timeout,
            on_text=push,
        )
        future = loop.run_in_executor(None, work)

        def finished(_: object) -> None:
            queue.put_nowait(_END)
            self._release_slot(route.adapter)
            self.unpin(route)

        future.add_done_callback(finished)
        first = await self._first_output(queue, gone, cancel)
        if first is None:
            return Response(status_code=CLIENT_CLOSED)
        if first is _END and future.exception() is not None:
            raise _server_error(future.exception())
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        chat = ChatStream(
            route.echo,
            parse_tools=parse_tools,
            parallel_tool_calls=body.parallel_tool_calls is not False,
            named_tool=isinstance(tool_choice, dict),
            include_usage=include_usage,
            tool_call_parser=parser,
        )

        def stop() -> None:  # the response ended first: its client went away
            if not future.done() and not cancel.is_set():
                cancel.set()  # the generation stops at its next token, then `finished` frees the slot
                self.metrics.abort("running")

        return _GenerationStream(self._frames(chat, first, queue, future, started), stop)

    async def _first_output(
        self, queue: asyncio.Queue[object], gone: asyncio.Future[None] | None, cancel: threading.Event
    ) -> object | None:
        """The first text of a starting stream (or `_END`); None, the generation stopped, if the client went first."""
        head = asyncio.ensure_future(queue.get())
        try:
            arrived = await _first(head, gone)
        except asyncio.CancelledError:
            cancel.set()
            raise
        if arrived:
            return head.result()
        head.cancel()
        cancel.set()  # it stops at its next token; the slot is freed when it has
        self.metrics.abort("running")
        return None

    async def _frames(
        self,
        chat: ChatStream,
        first: object,
        queue: asyncio.Queue[object],
        future: asyncio.Future[GenerationOutput],
        started: float,
    ) -> AsyncIterator[bytes]:
        """The SSE frames of a started stream: text as it arrives, then the end (or an error frame)."""
        item = first
        yield chat.start()
        while item is not _END:
            for frame in chat.feed(str(item)):
                yield frame
            item = await queue.get()
        exc = future.exception()
        if exc is not None:
            err = _server_error(exc)
            for frame in chat.error(err.status, err.message, err.type, err.param):
                yield frame
            return
        out = future.result()
        for frame in chat.finish(
            out.finish_reason,
            out.stop_reason,
            prompt_tokens=out.prompt_tokens,
            completion_tokens=out.completion_tokens,
        ):
            yield frame
        self.metrics.observe(
            prompt_tokens=out.prompt_tokens,
            completion_tokens=out.completion_tokens,
            finish_reason=out.finish_reason,
            seconds=time.perf_counter() - started,
        )


class _GenerationStream(StreamingResponse):
    """SSE over a running generation; `stop` runs whenever the response is over, so a generation whose
    client went away (Starlette ends the response on `http.disconnect`) never runs on unread."""

    def __init__(self, frames: AsyncIterator[bytes], stop: Callable[[], None]) -> None:
        super().__init__(frames, media_type="text/event-stream")
        self._stop = stop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._stop()


def _resolve_adapter_path(path: str) -> str:
    """vLLM's path rule: absolute as is, `~` expanded, an existing relative path made absolute."""
    expanded = os.path.expanduser(path)
    if os.path.isabs(expanded) or not os.path.exists(expanded):
        return expanded
    return os.path.abspath(expanded)


def create_app(
    engine: LocalEngine,
    *,
    served_model_name: str | Sequence[str] | None = None,
    enable_lora: bool = False,
    allow_runtime_lora_updating: bool = False,
    api_key: str | None = None,
    model: str | None = None,
    **options: Any,
) -> FastAPI:
    """The FastAPI app of `rrr engine serve` over `engine` (see `ServeConfig` for `options`)."""
    names = [served_model_name] if isinstance(served_model_name, str) else list(served_model_name or [])
    config = ServeConfig(
        served_model_names=names or [engine.served_name],
        model=model or engine.model_path,
        enable_lora=enable_lora,
        allow_runtime_lora_updating=allow_runtime_lora_updating,
        api_key=api_key,
        **options,
    )
    return build_app(EngineServer(engine, config))


def build_app(server: EngineServer) -> FastAPI:
    config = server.config
    app = FastAPI(title="rrr engine serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    install_error_handlers(app, legacy=config.legacy_errors)

    async def health() -> Response:
        """200 with an empty body while the engine can serve, 503 (empty) once it cannot."""
        return Response(status_code=200 if await server.engine.health() else 503)

    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/ping", health, methods=["GET", "POST"])

    @app.get("/version")
    async def version() -> dict[str, str]:
        return {"version": VLLM_VERSION}

    @app.get("/load")
    async def load() -> dict[str, int]:
        return {"server_load": len(server.scheduler.running) + len(server.scheduler.waiting)}

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(server.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return server.models()

    @app.post("/v1/chat/completions", dependencies=[Depends(require_json)])
    async def chat(body: ChatBody, request: Request) -> Response:
        return await server.chat(body, until_disconnected(request.receive))

    if config.allow_runtime_lora_updating:
        log.warning("runtime LoRA updating is on: only for local development (as in vLLM)")
        lora = APIRouter(dependencies=[Depends(require_json)])

        @lora.post("/v1/load_lora_adapter")
        async def load_lora(body: LoadLoRABody) -> Response:
            return await server.load_lora(body)

        @lora.post("/v1/unload_lora_adapter")
        async def unload_lora(body: UnloadLoRABody) -> Response:
            return await server.unload_lora(body)

        app.include_router(lora)

    if config.api_key:
        app.add_middleware(BearerAuth, key=config.api_key)
    return app
