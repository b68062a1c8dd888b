"""Where an evaluation's answers come from: a running ``rrr serve``, or an engine in this process.

Who calls it: ``evals.run`` (one ``run`` per model and item) and the CLI, which
builds the runner. Both runners send each item through rrr's own reflect/retry loop, so what is
measured is what clients get:

* ``ServerRunner`` talks to ``rrr serve`` through the official ``openai`` SDK, with the ``rrr``
  extension (verifier, reference answer, ``max_retries`` = attempts - 1, ``include_attempts``) so
  the server reflects and retries itself and returns every model call in ``rrr.trace``;
* ``EngineRunner`` runs ``agent.loop.run_episode`` on an ``Engine`` (the in-process
  ``LocalEngine`` for ``--model DIR``), with adapter folders loaded under their names.

Two kinds of failure: ``TargetError`` (the target cannot serve at all: unreachable, key refused,
unknown model; the run stops) and ``ItemError`` (this item could not be run: engine error,
timeout, rejected request; the item is left for a later run). A wrong answer is neither.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.loop import LoopConfig, run_episode
from engines.base import ChatRequest, Engine, EngineError
from evals.items import EvalTask


class TargetError(Exception):
    """The evaluation target cannot serve at all; the message says what to change."""


class ItemError(Exception):
    """One item could not be run (not a wrong answer); a rerun with the same --out retries it."""


@dataclass(frozen=True)
class Step:
    """One model call of an episode: an answer, a reflection or a retry, and rrr's own verdict."""

    kind: str
    message: dict[str, Any]
    finish_reason: str | None = None
    served_ok: bool | None = None


@dataclass
class Trace:
    """Everything one episode produced, as the runner saw it."""

    steps: list[Step]
    status: str | None = None
    episode_id: str | None = None
    adapter: str | None = None
    error: str | None = None
    """The engine failed after some answers (those are still scored)."""


class Runner(Protocol):
    """Runs one item through rrr's reflect/retry loop on one model name."""

    target: str
    """What is evaluated, for the summary (a URL or a model directory)."""

    async def start(self, models: Sequence[str]) -> None: ...

    async def run(self, task: EvalTask, model: str, attempts: int) -> Trace: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class Sampling:
    """How answers are sampled: greedy by default, so runs are repeatable."""

    temperature: float = 0.0
    max_tokens: int = 512
    timeout_s: float = 600.0


def _v1(base_url: str) -> str:
    url = base_url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


class ServerRunner:
    """Items through a running ``rrr serve`` (``--base-url``), which reflects and retries itself.

    Every request says ``rrr.purpose = "eval"`` unless ``trainable`` is set: the server stores the
    episodes (inspectable like any other) but never trains or gates on them, so a test set cannot
    leak into training however often it is evaluated.
    """

    def __init__(
        self, base_url: str, api_key: str | None = None, sampling: Sampling = Sampling(), *, trainable: bool = False
    ) -> None:
        import openai

        self.target = base_url
        self.url = _v1(base_url)
        self.sampling = sampling
        self.purpose = "traffic" if trainable else "eval"
        # No SDK retries: rrr's loop is the only retry, and a rerun resumes what failed.
        self._client = openai.AsyncOpenAI(
            base_url=self.url, api_key=api_key or "no-key", max_retries=0, timeout=sampling.timeout_s
        )

    def _fatal(self, exc: Exception) -> TargetError | None:
        import openai

        if isinstance(exc, openai.APITimeoutError):
            return None
        if isinstance(exc, openai.APIConnectionError):
            return TargetError(f"cannot reach rrr at {self.target} (is `rrr serve` running there?)")
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            return TargetError(
                f"rrr at {self.target} refused the API key ({exc.status_code}); give --api-key or set RRR_API_KEY"
            )
        if isinstance(exc, openai.NotFoundError):
            return TargetError(f"rrr at {self.target} answered 404: {_message(exc)}")
        if isinstance(exc, openai.BadRequestError) and _param(exc) == "rrr.max_retries":
            return TargetError(
                f"rrr at {self.target} refused the retry budget: {_message(exc)} "
                "(lower --attempts, or raise RRR_MAX_CLIENT_RETRIES and RRR_MAX_CALLS on the server)"
            )
        return None

    async def start(self, models: Sequence[str]) -> None:
        """Fail fast: the server answers, takes the key, and serves every model name asked for."""
        try:
            page = await self._client.models.list()
        except Exception as exc:
            fatal = self._fatal(exc)
            raise fatal or TargetError(f"rrr at {self.target} did not list its models: {_message(exc)}") from None
        served = [m.id for m in page.data]
        if not any(getattr(m, "owned_by", None) == "rrr" for m in page.data):
            raise TargetError(
                f"{self.target} does not look like `rrr serve` (no model of its is owned by rrr): "
                "--base-url must point at rrr, not at vLLM or another OpenAI server"
            )
        missing = [m for m in models if m not in served]
        if missing:
            raise TargetError(
                f"rrr at {self.target} does not serve {', '.join(map(repr, missing))} "
                f"(it serves: {', '.join(served) or 'nothing'})"
            )

    async def run(self, task: EvalTask, model: str, attempts: int) -> Trace:
        kwargs: dict[str, Any] = {
            "model": model,
            "messages": task.messages,
            "temperature": self.sampling.temperature,
            "max_tokens": self.sampling.max_tokens,
            "extra_body": {"rrr": task.extension(attempts, purpose=self.purpose)},
        }
        if task.tools:
            kwargs["tools"] = task.tools
        try:
            completion = await self._client.chat.completions.create(**kwargs)
        except Exception as exc:
            fatal = self._fatal(exc)
            if fatal is not None:
                raise fatal from None
            raise ItemError(_message(exc)) from None
        rrr = (completion.model_extra or {}).get("rrr")
        trace = rrr.get("trace") if isinstance(rrr, dict) else None
        if not isinstance(rrr, dict) or not isinstance(trace, list):
            raise TargetError(
                f"{self.target} did not return rrr's attempt trace: --base-url must point at "
                "`rrr serve` (not at vLLM or another OpenAI server)"
            )
        steps = [
            Step(
                kind=str(s.get("kind")),
                message=dict(s.get("message") or {}),
                finish_reason=s.get("finish_reason"),
                served_ok=(s.get("verdict") or {}).get("ok") if isinstance(s.get("verdict"), dict) else None,
            )
            for s in trace
            if isinstance(s, dict)
        ]
        return Trace(
            steps=steps,
            status=rrr.get("status"),
            episode_id=rrr.get("episode_id"),
            adapter=rrr.get("adapter"),
            error=rrr.get("error"),
        )

    async def aclose(self) -> None:
        await self._client.close()


def _param(exc: Exception) -> str | None:
    body = getattr(exc, "body", None)
    inner = body.get("error", body) if isinstance(body, dict) else None
    param = inner.get("param") if isinstance(inner, dict) else None
    return param if isinstance(param, str) else None


def _message(exc: Exception) -> str:
    """The server's own error message when there is one, else the exception's first line."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            status = getattr(exc, "status_code", None)
            return f"{inner['message']}" + (f" (HTTP {status})" if status else "")
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


@dataclass
class EngineRunner:
    """Items through ``run_episode`` on an engine in this process (``--model DIR``).

    ``adapters`` maps model names to LoRA adapter folders, loaded under those names by ``start``;
    any other name means the base model.
    """

    engine: Engine
    target: str
    sampling: Sampling = Sampling()
    adapters: Mapping[str, str] = field(default_factory=dict)
    loop: LoopConfig = field(default_factory=LoopConfig)

    async def start(self, models: Sequence[str]) -> None:
        for name in models:
            path = self.adapters.get(name)
            if path is None:
                continue
            try:
                await self.engine.load_adapter(name, path)
            except EngineError as exc:
                raise TargetError(f"cannot load the adapter {name} from {path}: {exc}") from None

    async def run(self, task: EvalTask, model: str, attempts: int) -> Trace:
        request = ChatRequest(
            messages=task.messages,
            model=model if model in self.adapters else None,
            tools=task.tools,
            temperature=self.sampling.temperature,
            max_tokens=self.sampling.max_tokens,
        )
        options = task.options(max_retries=attempts - 1)
        config = dataclasses.replace(self.loop, max_calls=1 + 2 * (attempts - 1), deadline_s=self.sampling.timeout_s)
        try:
            outcome = await run_episode(self.engine, request, options, config)
        except ValueError as exc:  # a verifier spec the loop refuses: this item cannot be judged
            raise ItemError(str(exc)) from None
        steps = [
            Step(
                kind=a.kind,
                message=a.message,
                finish_reason=a.finish_reason,
                served_ok=None if a.verdict is None else a.verdict.ok,
            )
            for a in outcome.attempts
        ]
        error = None if outcome.error is None else f"{type(outcome.error).__name__}: {outcome.error}"
        if not any(s.kind != "reflection" for s in steps):
            raise ItemError(error or "the engine gave no answer")
        return Trace(
            steps=steps,
            status=outcome.status,
            episode_id=outcome.episode_id,
            adapter=model if model in self.adapters else None,
            error=error,
        )

    async def aclose(self) -> None:
        await self.engine.aclose()


def local_runner(
    model_dir: str,
    *,
    served_name: str,
    adapters: Mapping[str, str] | None = None,
    sampling: Sampling = Sampling(),
    device: str | None = None,
) -> EngineRunner:
    """An ``EngineRunner`` over a ``LocalEngine`` of ``model_dir`` (needs the ``ml`` extra: torch)."""
    from engines.local import LocalEngine

    engine = LocalEngine(model_dir, served_name=served_name, device=device, max_lora_rank=512)
    return EngineRunner(engine=engine, target=model_dir, sampling=sampling, adapters=dict(adapters or {}))
