"""The `rrr` command line: noun-verb groups over the packages.

Only entry points read the environment; this module turns flags and `RRR_*` variables into plain
arguments for library functions. Expected failures print one line and exit 1.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

app = typer.Typer(help="rrr: a self-improving tool-calling backend (Reflect, Retry, Reward).", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
tools_app = typer.Typer(help="Tool specs and dataset converters.", no_args_is_help=True)
eval_app = typer.Typer(help="Score and evaluate tool calls.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(tools_app, name="tools")
app.add_typer(eval_app, name="eval")


def fail(message: str) -> NoReturn:
    """Print one line to stderr and exit 1 (an expected failure, not a crash)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def default_database_url() -> str:
    url = os.environ.get("RRR_DATABASE_URL")
    if url:
        return url
    data_dir = os.environ.get("RRR_DATA_DIR", os.path.join(os.path.expanduser("~"), ".rrr"))
    os.makedirs(data_dir, exist_ok=True)
    return "sqlite:///" + os.path.join(data_dir, "rrr.db")


@db_app.command("upgrade")
def db_upgrade(
    database_url: str = typer.Option(None, "--database-url", help="SQLAlchemy URL; default $RRR_DATABASE_URL or SQLite under $RRR_DATA_DIR."),
    revision: str = typer.Option("head", help="Target Alembic revision."),
) -> None:
    """Create or migrate the schema to REVISION (default: the newest)."""
    from store.db import upgrade

    url = database_url or default_database_url()
    try:
        upgrade(url, revision)
    except Exception as exc:  # one line for the operator, details in the log
        logging.getLogger(__name__).debug("upgrade failed", exc_info=True)
        fail(f"could not upgrade the database: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    typer.echo(f"database at revision {revision}")


@tools_app.command("convert")
def tools_convert(
    path: str = typer.Argument(..., help="The dataset file whose tools to convert."),
    source: str = typer.Option(..., "--from", help="Source format: xlam, bfcl or openai."),
) -> None:
    """Print the OpenAI tools of a dataset file as one JSON array (deduplicated by name and schema)."""
    import json

    from tools.formats import convert_tools

    try:
        tools = convert_tools(source, path)
    except ValueError as exc:
        fail(str(exc))
    typer.echo(json.dumps([t.to_openai() for t in tools], indent=2, ensure_ascii=False))


@eval_app.command("score")
def eval_score(
    dataset: str = typer.Option(..., "--dataset", help="FORMAT:PATH with FORMAT xlam, bfcl, openai or countdown."),
    predictions: str = typer.Option(..., "--predictions", help="JSON Lines of {id, tool_calls, content?}."),
    answers: str | None = typer.Option(None, "--answers", help="BFCL possible_answer file (default: BFCL's layout)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Score a predictions file against a dataset's reference answers."""
    import json

    from tools.formats import load_dataset
    from tools.score import score_predictions

    try:
        items = load_dataset(dataset, answers)
        report = score_predictions(items, predictions)
    except ValueError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(report.to_dict(), ensure_ascii=False))
        return
    rows = [("total", str(report.total)), ("correct", str(report.correct)), ("accuracy", f"{report.accuracy:.2%}")]
    width = max(len(name) for name in ["accuracy", *report.categories])
    for name, value in rows:
        typer.echo(f"{name:<{width}}  {value}")
    if report.categories:
        typer.echo("")
        typer.echo(f"{'category':<{width}}  {'correct':>7}  {'total':>5}  accuracy")
        for name, cat in report.categories.items():
            typer.echo(f"{name:<{width}}  {cat['correct']:>7}  {cat['total']:>5}  {cat['accuracy']:.2%}")
    if report.unmatched:
        typer.echo(f"\n{len(report.unmatched)} predictions matched no dataset item", err=True)


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
    served_model_name: list[str] = typer.Option([], "--served-model-name", help="Public base-model name (repeatable; default: --model)."),
    enable_lora: bool = typer.Option(False, "--enable-lora", help="Allow LoRA adapters."),
    max_lora_rank: int = typer.Option(16, "--max-lora-rank", help="Largest adapter rank accepted (1, 8, 16, 32, 64, 128, 256, 320, 512)."),
    max_model_len: int | None = typer.Option(None, "--max-model-len", help="Context length (default: the model's)."),
    api_key: str | None = typer.Option(None, "--api-key", help="Bearer key for /v1/* (default: $VLLM_API_KEY)."),
    auto_tools: bool = typer.Option(True, "--enable-auto-tool-choice/--no-enable-auto-tool-choice", help="Parse hermes tool calls (on by default, unlike vLLM); off answers tool requests with vLLM's 400."),
    device: str | None = typer.Option(None, "--device", help="torch device (default: cuda if available, else cpu)."),
    legacy_errors: bool = typer.Option(False, "--legacy-error-shape", help="Errors in the pre-0.10.1 flat shape."),
    always_tool_calls: bool = typer.Option(False, "--always-tool-calls", help="Send message.tool_calls: [] when empty (vLLM 0.22)."),
    add_lora_delay: float = typer.Option(0.0, "--add-lora-delay", help="Seconds of injected latency per adapter load."),
) -> None:
    """Serve a model like `vllm serve` (runtime LoRA routes only with VLLM_ALLOW_RUNTIME_LORA_UPDATING=1)."""
    if max_lora_rank not in (1, 8, 16, 32, 64, 128, 256, 320, 512):
        fail(f"--max-lora-rank must be one of 1, 8, 16, 32, 64, 128, 256, 320, 512 (got {max_lora_rank})")
    try:
        import uvicorn

        from agent.engines.local import LocalEngine
        from agent.engines.server import create_app
    except ImportError as exc:
        fail(f"the ml extra is not installed ({exc.name}); install with: pip install -e '.[ml]'")
    names = served_model_name or [model]
    try:
        engine = LocalEngine(model, device=device, served_name=names[0], max_model_len=max_model_len,
                             max_lora_rank=max_lora_rank, enable_lora=enable_lora)
    except Exception as exc:  # one line for the operator, details in the log
        logging.getLogger(__name__).debug("model load failed", exc_info=True)
        fail(f"could not load the model {model}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    server = create_app(
        engine, served_model_name=names, model=model, enable_lora=enable_lora,
        allow_runtime_lora_updating=_env_flag("VLLM_ALLOW_RUNTIME_LORA_UPDATING"),
        api_key=api_key or os.environ.get("VLLM_API_KEY") or None, enable_auto_tool_choice=auto_tools,
        legacy_errors=legacy_errors, always_tool_calls=always_tool_calls, add_lora_delay_s=add_lora_delay)
    uvicorn.run(server, host=host, port=port, log_level=os.environ.get("RRR_LOG_LEVEL", "warning").lower(),
                timeout_graceful_shutdown=5)


@app.command("serve")
def serve(
    model: str | None = typer.Option(None, "--model", help="Local model directory served in-process (the embedded default)."),
    engine_url: str | None = typer.Option(None, "--engine-url", help="vLLM or `rrr engine serve` URL(s), comma-separated replicas."),
    database_url: str | None = typer.Option(None, "--database-url", help="SQLAlchemy URL; default $RRR_DATABASE_URL or SQLite under the data dir."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Embedded database and spool files (default $RRR_DATA_DIR or ~/.rrr)."),
    host: str | None = typer.Option(None, "--host", help="Address to bind (default 127.0.0.1; anything else needs API keys)."),
    port: int | None = typer.Option(None, "--port", help="Port to bind (default 8000)."),
    api_key_env: str | None = typer.Option(None, "--api-key-env", help="Environment variable with the inference keys, comma-separated (default RRR_API_KEYS)."),
    admin_key_env: str | None = typer.Option(None, "--admin-key-env", help="Environment variable with the admin keys, comma-separated (default RRR_ADMIN_KEYS)."),
    base_model_name: str | None = typer.Option(None, "--base-model-name", help="Public name of the base model (default: asked from the engines)."),
) -> None:
    """Serve the OpenAI-compatible API with verified tool calls, reflection and retry (other settings: RRR_* variables)."""
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
    for name, value in (("model", model), ("engine_urls", engine_url), ("database_url", database_url),
                        ("data_dir", data_dir), ("host", host), ("port", port), ("base_model_name", base_model_name)):
        if value is not None:
            overrides[name] = value
    if model:
        overrides["engine_urls"] = []
    elif engine_url:
        overrides["model"] = None
    for field, env_name in (("api_keys", api_key_env), ("admin_keys", admin_key_env)):
        if env_name is not None:
            if env_name not in os.environ:
                fail(f"the environment variable {env_name} (named by --{field.replace('_keys', '')}-key-env) is not set")
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
                bound = self.servers[0].sockets[0].getsockname()[1] if self.servers and self.servers[0].sockets else settings.port
                docs = " (docs at /docs)" if settings.docs else ""
                typer.echo(f"rrr serving on http://{shown_host}:{bound}{docs}")

    config = uvicorn.Config(api, host=settings.host, port=settings.port, lifespan="on",
                            log_level=os.environ.get("RRR_LOG_LEVEL", "warning").lower(),
                            timeout_graceful_shutdown=max(1, int(settings.shutdown_drain_s)))
    server = Server(config)

    def _stopped(signum: int, frame: object) -> None:
        # uvicorn drains, then re-raises SIGTERM; a completed graceful shutdown exits 0
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stopped)
    try:
        server.run()
    except SystemExit:
        if server.started:
            raise
    if not server.started:
        reason = getattr(api.state, "startup_error", None)
        fail(f"rrr could not start: {reason}" if reason else "rrr could not start (see the log above)")


# --- learner and adapters -------------------------------------------------------------------------------

learn_app = typer.Typer(help="The learner: mine failures, run one cycle now, or run on a schedule.", no_args_is_help=True)
adapters_app = typer.Typer(help="LoRA adapters: list, activate, roll back (verified, loaded and probed before any flip).",
                           no_args_is_help=True)
app.add_typer(learn_app, name="learn")
app.add_typer(adapters_app, name="adapters")

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from agent.engines.pool import EnginePool
    from learner.cycle import CycleResult, LearnerConfig
    from learner.mine import MineSummary
    from store.models import Adapter

_DB_OPT = typer.Option(None, "--database-url", help="SQLAlchemy URL; default $RRR_DATABASE_URL or SQLite under $RRR_DATA_DIR.")
_ENGINES_OPT = typer.Option([], "--engine-url", envvar="RRR_ENGINE_URLS", help="Serving engine URL (vLLM or `rrr engine serve`); repeat or comma-separate replicas.")
_ROOT_OPT = typer.Option(None, "--adapters-root", envvar="RRR_ADAPTERS_ROOT", help="Folder of published adapters (default: adapters/ under $RRR_DATA_DIR); the engines must see the same path.")
_MODEL_OPT = typer.Option(None, "--model", envvar="RRR_MODEL", help="Base model folder the engines serve (training and the gate's local engine use it).")
_BASE_OPT = typer.Option(None, "--base-model-name", envvar="RRR_BASE_MODEL_NAME", help="The engines' served base name (default: asked from the engines).")
_WORK_OPT = typer.Option(None, "--work-dir", envvar="RRR_LEARNER_WORK_DIR", help="Training outputs and checkpoints (default: learner/ under $RRR_DATA_DIR).")
_K_OPT = typer.Option(32, "--min-failures", envvar="RRR_LEARN_MIN_FAILURES", help="K: train only when at least this many new trainable failures exist.")
_MARGIN_OPT = typer.Option(0.02, "--gate-margin", envvar="RRR_GATE_MARGIN", help="Held-out retry success must improve by at least this (0.02 = 2 points).")
_TOL_OPT = typer.Option(0.01, "--gate-tolerance", envvar="RRR_GATE_TOLERANCE", help="Regression first-attempt success may drop by at most this.")
_MIN_ITEMS_OPT = typer.Option(20, "--gate-min-items", envvar="RRR_GATE_MIN_ITEMS", help="Fewer held-out items than this: no promotion.")
_DRAIN_OPT = typer.Option(120.0, "--drain-s", envvar="RRR_ADAPTER_DRAIN_S", help="Seconds a replaced adapter stays loaded (cover the API deadline + policy TTL).")
_RANK_OPT = typer.Option(16, "--max-lora-rank", envvar="RRR_MAX_LORA_RANK", help="The engines' --max-lora-rank.")
_SHARE_OPT = typer.Option(0.25, "--max-client-share", envvar="RRR_MAX_CLIENT_SHARE", help="Largest share of a batch from one client key (1.0 for single-tenant or mined data).")
_LIMIT_OPT = typer.Option(512, "--dataset-limit", envvar="RRR_DATASET_LIMIT", help="Failures per training batch at most.")
_TRAIN_OPT = typer.Option(None, "--train-config", envvar="RRR_TRAIN_CONFIG", help="JSON file of TrainConfig fields (default: the paper's defaults).")
_INTERVAL_OPT = typer.Option(3600.0, "--interval", envvar="RRR_LEARN_INTERVAL_S", help="Seconds between scheduled cycles.")


def _data_dir() -> Path:
    return Path(os.environ.get("RRR_DATA_DIR", os.path.join(os.path.expanduser("~"), ".rrr")))


def _engine_urls(values: list[str]) -> list[str]:
    return [u.strip() for value in values for u in value.split(",") if u.strip()]


def _session_factory(database_url: str | None) -> tuple[str, sessionmaker[Session]]:
    from store.db import make_engine, make_session_factory, upgrade

    url = database_url or default_database_url()
    if database_url is None and not os.environ.get("RRR_DATABASE_URL"):
        upgrade(url)  # the embedded SQLite database migrates itself, as `rrr serve` does
    return url, make_session_factory(make_engine(url))


def _engine_pool(urls: list[str]) -> EnginePool:
    from agent.engines.pool import EnginePool
    from agent.engines.vllm import VLLMEngine

    if not urls:
        fail("no serving engine: give --engine-url URL (or set RRR_ENGINE_URLS)")
    key = os.environ.get("RRR_ENGINE_API_KEY") or None
    return EnginePool([VLLMEngine(url, key, name=f"engine-{i}") for i, url in enumerate(urls)])


def _learner_config(database_url: str, engine_url: list[str], adapters_root: str | None, model: str | None,
                    base_model_name: str | None, work_dir: str | None, min_failures: int, gate_margin: float,
                    gate_tolerance: float, gate_min_items: int, drain_s: float, max_lora_rank: int,
                    max_client_share: float, dataset_limit: int, train_config: str | None, interval: float
                    ) -> LearnerConfig:
    import json

    from learner.config import TrainConfig
    from learner.cycle import LearnerConfig
    from learner.gate import GateConfig

    if not model:
        fail("no base model: give --model DIR (or set RRR_MODEL), the folder the engines serve")
    train = None
    try:
        if train_config:
            train = TrainConfig.from_dict(json.loads(Path(train_config).read_text(encoding="utf-8")))
            train.max_lora_rank = max_lora_rank
        return LearnerConfig(
            adapters_root=adapters_root or str(_data_dir() / "adapters"), model_path=model,
            engine_urls=_engine_urls(engine_url), database_url=database_url,
            work_dir=work_dir or str(_data_dir() / "learner"), base_model_name=base_model_name,
            min_new_failures=min_failures, interval_s=interval, drain_s=drain_s, max_lora_rank=max_lora_rank,
            dataset_limit=dataset_limit, max_client_share=max_client_share, train=train,
            gate=GateConfig(margin=gate_margin, tolerance=gate_tolerance, min_items=gate_min_items)).validate()
    except (OSError, ValueError) as exc:
        fail(str(exc))


@learn_app.command("mine")
def learn_mine(
    dataset: str = typer.Option(..., "--dataset", help="FORMAT:PATH with FORMAT xlam, bfcl, openai or countdown."),
    samples: int = typer.Option(8, "--samples", help="Answers sampled per query at most (sampling stops at the first failure)."),
    engine_url: str = typer.Option(..., "--engine-url", help="The engine to sample from (vLLM or `rrr engine serve`)."),
    database_url: str | None = _DB_OPT,
    answers: str | None = typer.Option(None, "--answers", help="BFCL possible_answer file (default: BFCL's layout)."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature (above 0)."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Cap per sampled answer."),
    model: str | None = typer.Option(None, "--model", help="Adapter name to sample from (default: the engine's base model)."),
    task: str = typer.Option("mined", "--task", help="Task tag stored on the episodes."),
    concurrency: int = typer.Option(4, "--concurrency", help="Queries sampled at once."),
    seed: int | None = typer.Option(None, "--seed", help="Base sampling seed (repeatable runs)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Rejection sampling (paper §4.3): store failed samples as trainable episodes, all-correct queries as successes."""
    import asyncio
    import json

    from tqdm import tqdm

    from learner.mine import MineConfig, mine_dataset
    from tools.formats import load_dataset

    config = MineConfig(samples=samples, temperature=temperature, max_tokens=max_tokens, concurrency=concurrency,
                        model=model, task=task, seed=seed)
    try:
        config.validate()
        items = load_dataset(dataset, answers)
    except ValueError as exc:
        fail(str(exc))
    _, sessions = _session_factory(database_url)
    pool = _engine_pool([engine_url])
    with tqdm(total=len(items), desc="mining", unit="query", disable=None) as bar:
        def step(summary: MineSummary) -> None:
            bar.update(1)
            bar.set_postfix(failures=summary.queries_with_failure, ok=summary.queries_all_ok)

        async def go() -> MineSummary:
            try:
                return await mine_dataset(items, pool, sessions, config, on_item=step)
            finally:
                await pool.aclose()

        summary = asyncio.run(go())
    if as_json:
        typer.echo(json.dumps(summary.to_dict()))
    else:
        for name, value in summary.to_dict().items():
            typer.echo(f"{name:<22} {value}")
    if summary.queries and summary.engine_errors and not summary.samples:
        fail(f"the engine answered none of {summary.engine_errors} requests")


def _print_cycle(result: CycleResult, as_json: bool) -> None:
    import json

    if as_json:
        typer.echo(json.dumps(result.to_dict(), default=str))
        return
    line = f"cycle: {result.status}"
    if result.run_id:
        line += f" (run {result.run_id})"
    if result.adapter and result.status == "promoted":
        line += f"; {result.adapter} is active"
    typer.echo(line)
    for reason in result.reasons:
        typer.echo(f"  - {reason}")


@learn_app.command("run")
def learn_run(
    database_url: str | None = _DB_OPT, engine_url: list[str] = _ENGINES_OPT, adapters_root: str | None = _ROOT_OPT,
    model: str | None = _MODEL_OPT, base_model_name: str | None = _BASE_OPT, work_dir: str | None = _WORK_OPT,
    min_failures: int = _K_OPT, gate_margin: float = _MARGIN_OPT, gate_tolerance: float = _TOL_OPT,
    gate_min_items: int = _MIN_ITEMS_OPT, drain_s: float = _DRAIN_OPT, max_lora_rank: int = _RANK_OPT,
    max_client_share: float = _SHARE_OPT, dataset_limit: int = _LIMIT_OPT, train_config: str | None = _TRAIN_OPT,
    as_json: bool = typer.Option(False, "--json", help="Print the cycle's result as one JSON object."),
) -> None:
    """One learner cycle now: count failures, train, gate, and publish or record why not."""
    import asyncio

    from tqdm import tqdm

    from learner.cycle import run_cycle

    url, sessions = _session_factory(database_url)
    config = _learner_config(url, engine_url, adapters_root, model, base_model_name, work_dir, min_failures,
                             gate_margin, gate_tolerance, gate_min_items, drain_s, max_lora_rank, max_client_share,
                             dataset_limit, train_config, 3600.0)
    pool = _engine_pool(config.engine_urls)
    steps = config.train.max_steps if config.train else None
    with tqdm(total=steps, desc="training", unit="step", disable=None, leave=False) as bar:
        def on_step(item: dict[str, object]) -> None:
            bar.update(1)
            bar.set_postfix({k: item[k] for k in ("reward", "loss") if isinstance(item.get(k), int | float)})

        def on_event(message: str) -> None:
            if not as_json:
                bar.write(message, file=sys.stderr)

        async def go() -> CycleResult:
            try:
                return await run_cycle(config, session_factory=sessions, engines=pool, on_event=on_event,
                                       on_step=on_step)
            finally:
                await pool.aclose()

        result = asyncio.run(go())
    _print_cycle(result, as_json)
    if result.status == "failed":
        fail(f"the learner cycle failed: {result.error}")


@learn_app.command("schedule")
def learn_schedule(
    interval: float = _INTERVAL_OPT, min_failures: int = _K_OPT,
    database_url: str | None = _DB_OPT, engine_url: list[str] = _ENGINES_OPT, adapters_root: str | None = _ROOT_OPT,
    model: str | None = _MODEL_OPT, base_model_name: str | None = _BASE_OPT, work_dir: str | None = _WORK_OPT,
    gate_margin: float = _MARGIN_OPT, gate_tolerance: float = _TOL_OPT, gate_min_items: int = _MIN_ITEMS_OPT,
    drain_s: float = _DRAIN_OPT, max_lora_rank: int = _RANK_OPT, max_client_share: float = _SHARE_OPT,
    dataset_limit: int = _LIMIT_OPT, train_config: str | None = _TRAIN_OPT,
) -> None:
    """Run learner cycles every --interval seconds (one at a time across processes, by store lease) until Ctrl-C."""
    from learner.schedule import LearnerScheduler

    url, sessions = _session_factory(database_url)
    config = _learner_config(url, engine_url, adapters_root, model, base_model_name, work_dir, min_failures,
                             gate_margin, gate_tolerance, gate_min_items, drain_s, max_lora_rank, max_client_share,
                             dataset_limit, train_config, interval)
    _engine_pool(config.engine_urls)  # fail fast on a missing engine
    scheduler = LearnerScheduler(config, session_factory=sessions, make_engines=lambda: _engine_pool(config.engine_urls),
                                 on_result=lambda r: _print_cycle(r, False),
                                 on_event=lambda m: typer.echo(m, err=True))
    import signal

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)  # leaves the scheduler's loop; shutdown waits for a running cycle

    signal.signal(signal.SIGTERM, stop)
    typer.echo(f"learner scheduled every {interval:g}s (K={min_failures}); Ctrl-C stops it", err=True)
    scheduler.start(blocking=True)


def _adapter_row(adapter: Adapter) -> dict[str, object]:
    return {"name": adapter.name, "version": adapter.version, "status": adapter.status,
            "base_model": adapter.base_model, "run_id": adapter.run_id, "path": adapter.path,
            "created_at": adapter.created_at.isoformat() if adapter.created_at else None,
            "activated_at": adapter.activated_at.isoformat() if adapter.activated_at else None}


@adapters_app.command("list")
def adapters_list(
    database_url: str | None = _DB_OPT,
    status: str | None = typer.Option(None, "--status", help="Only adapters with this status (candidate, active, retired, rejected)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON array instead of a table."),
) -> None:
    """List adapters, newest version first."""
    import json

    from store import repos

    _, sessions = _session_factory(database_url)
    with sessions() as session:
        rows = [_adapter_row(a) for a in repos.list_adapters(session, status=status)]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        typer.echo("no adapters (the base model serves)")
    for row in rows:
        typer.echo(f"{row['name']:<12} {row['status']:<10} {row['created_at']}  run {row['run_id'] or '-'}")


def _adapter_admin(action: str, name: str | None, database_url: str | None, engine_url: list[str],
                   adapters_root: str | None, unload_after: float | None) -> None:
    import asyncio

    from agent import adapters
    from learner import publish
    from store import repos

    _, sessions = _session_factory(database_url)
    pool = _engine_pool(_engine_urls(engine_url))
    root = adapters_root or str(_data_dir() / "adapters")

    async def go() -> str:
        try:
            if action == "activate":
                assert name is not None
                flip = await adapters.activate(name, session_factory=sessions, engines=pool, adapters_root=root)
            else:
                flip = await adapters.rollback(session_factory=sessions, engines=pool, adapters_root=root)
            if flip.replaced and unload_after is not None:
                publish.schedule_unload(pool, sessions, flip.replaced, unload_after, adapters_root=root)
                await publish.wait_background_unloads()
            if not flip.changed and flip.active is None:
                return "no adapter is active: the base model serves and there is nothing to roll back"
            return f"{flip.active.name} is active" if flip.active else "no adapter is active: the base model serves"
        finally:
            await pool.aclose()

    try:
        typer.echo(asyncio.run(go()))
    except repos.AdapterNotFound:
        fail(f"no adapter named {name}; `rrr adapters list` shows them")
    except adapters.ActivationError as exc:
        fail(f"{exc}; nothing changed")


_UNLOAD_OPT = typer.Option(None, "--unload-after", help="Wait this many seconds, then unload the replaced adapter (default: leave it loaded; the learner's next cycle unloads it after its drain period).")


@adapters_app.command("activate")
def adapters_activate(
    name: str = typer.Argument(..., help="The adapter to make active, e.g. rrr-v3."),
    database_url: str | None = _DB_OPT, engine_url: list[str] = _ENGINES_OPT, adapters_root: str | None = _ROOT_OPT,
    unload_after: float | None = _UNLOAD_OPT,
) -> None:
    """Verify, load and probe NAME on every engine, then make it active (the previous one is kept for rollback)."""
    _adapter_admin("activate", name, database_url, engine_url, adapters_root, unload_after)


@adapters_app.command("rollback")
def adapters_rollback(
    database_url: str | None = _DB_OPT, engine_url: list[str] = _ENGINES_OPT, adapters_root: str | None = _ROOT_OPT,
    unload_after: float | None = _UNLOAD_OPT,
) -> None:
    """Re-activate the adapter the active one replaced (reloading it first), or the base model."""
    _adapter_admin("rollback", None, database_url, engine_url, adapters_root, unload_after)


demo_app = typer.Typer(help="The laptop demo: its base policy and its tasks.", no_args_is_help=True)
app.add_typer(demo_app, name="demo")


@demo_app.command("build-policy")
def demo_build_policy(
    out: Path = typer.Option(Path("demo/policy"), "--out", help="Directory to write the policy into (replaced)."),
    seed: int = typer.Option(0, "--seed", help="Corpus, initialisation and batch-order seed."),
    steps: int | None = typer.Option(None, "--steps", help="Optimiser steps (default: the shipped recipe)."),
    threads: int = typer.Option(2, "--threads", help="CPU threads for training (the result depends on it only "
                                "through floating-point summation order)."),
) -> None:
    """Train the demo's base policy from scratch on the synthetic catalog corpus (minutes on 2 cores)."""
    from dataclasses import replace

    try:
        from learner.demo.policy import build_policy, policy_size_bytes
        from learner.demo.sft import SFTConfig
    except ImportError as exc:
        fail(f"the ml extra is not installed ({exc.name}); install with: pip install -e '.[ml]'")
    config = SFTConfig(seed=seed)
    if steps is not None:
        config = replace(config, steps=steps)
    try:
        result = build_policy(out, config, num_threads=threads)
    except OSError as exc:
        fail(f"could not write the policy to {out}: {exc.strerror or exc}")
    size = policy_size_bytes(out) / 1e6
    typer.echo(f"policy written to {out}: {result.parameters:,} parameters, {size:.1f} MB, "
               f"trained in {result.seconds:.0f} s")


@demo_app.command("eval-policy")
def demo_eval_policy(
    policy: Path = typer.Option(Path("demo/policy"), "--policy", help="The policy directory to measure."),
    adapter: Path | None = typer.Option(None, "--adapter", help="A LoRA adapter directory to apply."),
    n: int = typer.Option(600, "--n", help="Held-out tasks (balanced over the twelve tools)."),
    threads: int = typer.Option(2, "--threads", help="CPU threads for generation."),
    out: Path | None = typer.Option(None, "--out", help="Also write the full summary as JSON here."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON instead of a table."),
) -> None:
    """Measure first-attempt and after-retry success on held-out tasks through the real agent loop."""
    import json

    try:
        from learner.demo.policy import evaluate_policy, format_summary, held_out_items, write_summary
    except ImportError as exc:
        fail(f"the ml extra is not installed ({exc.name}); install with: pip install -e '.[ml]'")
    if not (policy / "config.json").is_file():
        fail(f"no policy at {policy}; build one with: rrr demo build-policy --out {policy}")
    summary = evaluate_policy(policy, held_out_items(n), adapter_dir=adapter, num_threads=threads)
    if out is not None:
        write_summary(out, summary)
    typer.echo(json.dumps(summary, ensure_ascii=False) if as_json else format_summary(summary))


@demo_app.command("tasks")
def demo_tasks(
    split: str = typer.Option("heldout", "--split", help="train or heldout."),
    n: int = typer.Option(600, "--n", help="How many tasks."),
    out: Path = typer.Option(..., "--out", help="JSON Lines file to write (the repo's openai format)."),
) -> None:
    """Write demo tasks with their reference answers (`rrr eval`/`--dataset openai:PATH` reads them)."""
    import json

    from learner.demo.corpus import generate_items, items_to_records
    from learner.demo.policy import held_out_items

    if split not in ("train", "heldout"):
        fail("--split must be train or heldout")
    items = held_out_items(n) if split == "heldout" else generate_items(n, seed=10_000, prefix="traffic")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for record in items_to_records(items):
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    typer.echo(f"{len(items)} {split} tasks written to {out}")


def main() -> None:
    logging.basicConfig(level=os.environ.get("RRR_LOG_LEVEL", "WARNING"), stream=sys.stderr)
    app()


if __name__ == "__main__":
    main()
