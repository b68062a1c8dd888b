"""`rrr model`, `rrr engine serve` and `rrr serve`: models, the local engine server and the API."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import typer

from cli.base import app, fail

model_app = typer.Typer(help="Local models: build the tiny demo/test model.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("tiny")
def model_tiny(
    out: Path = typer.Option(..., "--out", help="Directory to write the model, tokenizer and chat template into."),
    seed: int = typer.Option(0, "--seed", help="Weight seed; the same seed gives byte-identical files."),
) -> None:
    """Build a tiny random Qwen2 model with a hermes tool-calling chat template (offline, seconds)."""
    from tqdm import tqdm

    with tqdm(total=1, desc="building tiny model", unit="model", disable=None) as bar:
        try:
            from learner.tiny import build_tiny_model

            path = build_tiny_model(out, seed=seed)
        except ImportError as exc:
            fail(f"the ml extra is not installed ({exc.name}); install with: pip install -e '.[ml]'")
        except OSError as exc:
            fail(f"could not write the model to {out}: {exc.strerror or exc}")
        bar.update(1)
    typer.echo(f"tiny model written to {path}")


engine_app = typer.Typer(help="The local engine behind a vLLM-compatible server.", no_args_is_help=True)
app.add_typer(engine_app, name="engine")


def _env_flag(name: str) -> bool:
    """vLLM's reading of a boolean environment variable: stripped, lower-cased `1` or `true`."""
    return os.environ.get(name, "").strip().lower() in ("1", "true")


@engine_app.command("serve")
def engine_serve(
    model: str = typer.Option(..., "--model", help="Model directory (or hub id) to serve; also the cards' root."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (keep it internal: R15)."),
    port: int = typer.Option(8000, "--port", help="Port to bind."),
    served_model_name: list[str] = typer.Option(
        [], "--served-model-name", help="Public base-model name (repeatable; default: --model)."
    ),
    enable_lora: bool = typer.Option(False, "--enable-lora", help="Allow LoRA adapters."),
    max_lora_rank: int = typer.Option(
        16, "--max-lora-rank", help="Largest adapter rank accepted (1, 8, 16, 32, 64, 128, 256, 320, 512)."
    ),
    max_model_len: int | None = typer.Option(None, "--max-model-len", help="Context length (default: the model's)."),
    api_key: str | None = typer.Option(None, "--api-key", help="Bearer key for /v1/* (default: $VLLM_API_KEY)."),
    auto_tools: bool = typer.Option(
        True,
        "--enable-auto-tool-choice/--no-enable-auto-tool-choice",
        help="Parse tool calls (on by default, unlike vLLM); off answers tool requests with vLLM's 400.",
    ),
    tool_call_parser: str = typer.Option(
        "hermes",
        "--tool-call-parser",
        envvar="RRR_TOOL_CALL_PARSER",
        help="The model's tool-call format, by vLLM's parser name: hermes, llama3_json, mistral or pythonic.",
    ),
    device: str | None = typer.Option(None, "--device", help="torch device (default: cuda if available, else cpu)."),
    legacy_errors: bool = typer.Option(False, "--legacy-error-shape", help="Errors in the pre-0.10.1 flat shape."),
    always_tool_calls: bool = typer.Option(
        False, "--always-tool-calls", help="Send message.tool_calls: [] when empty (vLLM 0.22)."
    ),
    add_lora_delay: float = typer.Option(0.0, "--add-lora-delay", help="Seconds of injected latency per adapter load."),
    max_waiting_requests: int = typer.Option(
        16,
        "--max-waiting-requests",
        envvar="RRR_ENGINE_SERVE_MAX_WAITING",
        help="Most chat requests queued behind the running one; one more is a 503 with Retry-After.",
    ),
) -> None:
    """Serve a model like `vllm serve` (runtime LoRA routes only with VLLM_ALLOW_RUNTIME_LORA_UPDATING=1)."""
    if max_lora_rank not in (1, 8, 16, 32, 64, 128, 256, 320, 512):
        fail(f"--max-lora-rank must be one of 1, 8, 16, 32, 64, 128, 256, 320, 512 (got {max_lora_rank})")
    if max_waiting_requests < 0:
        fail(f"--max-waiting-requests must be 0 or more (got {max_waiting_requests})")
    from tools.toolcall_formats import check_tool_call_parser

    try:
        check_tool_call_parser(tool_call_parser)
    except ValueError as exc:
        fail(f"--tool-call-parser: {exc}")
    try:
        import uvicorn

        from engines.local import LocalEngine
        from engines.server import create_app
    except ImportError as exc:
        fail(f"the ml extra is not installed ({exc.name}); install with: pip install -e '.[ml]'")
    names = served_model_name or [model]
    try:
        engine = LocalEngine(
            model,
            device=device,
            served_name=names[0],
            max_model_len=max_model_len,
            max_lora_rank=max_lora_rank,
            enable_lora=enable_lora,
            tool_call_parser=tool_call_parser,
        )
    except Exception as exc:  # one line for the operator, details in the log
        logging.getLogger(__name__).debug("model load failed", exc_info=True)
        fail(f"could not load the model {model}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    server = create_app(
        engine,
        served_model_name=names,
        model=model,
        enable_lora=enable_lora,
        allow_runtime_lora_updating=_env_flag("VLLM_ALLOW_RUNTIME_LORA_UPDATING"),
        api_key=api_key or os.environ.get("VLLM_API_KEY") or None,
        enable_auto_tool_choice=auto_tools,
        legacy_errors=legacy_errors,
        always_tool_calls=always_tool_calls,
        add_lora_delay_s=add_lora_delay,
        max_waiting_requests=max_waiting_requests,
    )
    uvicorn.run(
        server,
        host=host,
        port=port,
        log_level=os.environ.get("RRR_LOG_LEVEL", "warning").lower(),
        timeout_graceful_shutdown=5,
    )


class _ExpectedStartupFailure(logging.Filter):
    """Hide uvicorn's traceback of an expected startup failure; `serve` prints it as one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        from api.app import StartupError

        if record.exc_info and isinstance(record.exc_info[1], StartupError):
            return False
        return f"{StartupError.__module__}.{StartupError.__name__}:" not in record.getMessage()


@app.command("serve")
def serve(  # noqa: C901 (a command: flag checks and startup errors, each a one-line failure)
    model: str | None = typer.Option(
        None, "--model", help="Local model directory served in-process (the embedded default)."
    ),
    engine_url: str | None = typer.Option(
        None, "--engine-url", help="vLLM or `rrr engine serve` URL(s), comma-separated replicas."
    ),
    database_url: str | None = typer.Option(
        None, "--database-url", help="SQLAlchemy URL; default $RRR_DATABASE_URL or SQLite under the data dir."
    ),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Embedded database and spool files (default $RRR_DATA_DIR or ~/.rrr)."
    ),
    host: str | None = typer.Option(
        None, "--host", help="Address to bind (default 127.0.0.1; anything else needs API keys)."
    ),
    port: int | None = typer.Option(None, "--port", help="Port to bind (default 8000)."),
    api_key_env: str | None = typer.Option(
        None,
        "--api-key-env",
        help="Environment variable with the inference keys, comma-separated (default RRR_API_KEYS).",
    ),
    admin_key_env: str | None = typer.Option(
        None,
        "--admin-key-env",
        help="Environment variable with the admin keys, comma-separated (default RRR_ADMIN_KEYS).",
    ),
    base_model_name: str | None = typer.Option(
        None, "--base-model-name", help="Public name of the base model (default: asked from the engines)."
    ),
) -> None:
    """Serve the OpenAI-compatible API with verified tool calls, reflection and retry (more: RRR_* variables)."""
    import signal
    import socket

    import uvicorn
    from pydantic import ValidationError

    from api.app import create_app
    from api.auth import BindRefused, check_bind
    from api.settings import Settings

    if model and engine_url:
        fail("give either --model or --engine-url, not both")
    overrides: dict[str, object] = {}
    for name, value in (
        ("model", model),
        ("engine_urls", engine_url),
        ("database_url", database_url),
        ("data_dir", data_dir),
        ("host", host),
        ("port", port),
        ("base_model_name", base_model_name),
    ):
        if value is not None:
            overrides[name] = value
    if model:
        overrides["engine_urls"] = []
    elif engine_url:
        overrides["model"] = None
    for field, env_name in (("api_keys", api_key_env), ("admin_keys", admin_key_env)):
        if env_name is not None:
            if env_name not in os.environ:
                fail(
                    f"the environment variable {env_name} (named by --{field.replace('_keys', '')}-key-env) is not set"
                )
            overrides[field] = os.environ[env_name]
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except (ValidationError, ValueError) as exc:
        errors = exc.errors() if isinstance(exc, ValidationError) else []
        detail = f"{'.'.join(map(str, errors[0]['loc']))}: {errors[0]['msg']}" if errors else str(exc)
        fail(f"invalid settings: {detail}")
    if not settings.engine_urls and not settings.model:
        fail("no engine: give --model DIR (in-process engine) or --engine-url URL (vLLM or `rrr engine serve`)")
    try:
        check_bind(settings.host, auth_enabled=settings.auth_enabled)
    except BindRefused as exc:
        fail(str(exc))
    api = create_app(settings)
    shown_host = f"[{settings.host}]" if ":" in settings.host else settings.host

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started:
                bound = (
                    self.servers[0].sockets[0].getsockname()[1]
                    if self.servers and self.servers[0].sockets
                    else settings.port
                )
                docs = " (docs at /docs)" if settings.docs else ""
                typer.echo(f"rrr serving on http://{shown_host}:{bound}{docs}")

    config = uvicorn.Config(
        api,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_level=os.environ.get("RRR_LOG_LEVEL", "warning").lower(),
        timeout_graceful_shutdown=max(1, int(settings.shutdown_drain_s)),
    )
    server = Server(config)

    def _stopped(signum: int, frame: object) -> None:
        # uvicorn drains, then re-raises SIGTERM; a completed graceful shutdown exits 0
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stopped)
    logging.getLogger("uvicorn.error").addFilter(_ExpectedStartupFailure())
    try:
        server.run()
    except SystemExit:
        if server.started:
            raise
    if not server.started:
        reason = getattr(api.state, "startup_error", None)
        fail(f"rrr could not start: {reason}" if reason else "rrr could not start (see the log above)")
