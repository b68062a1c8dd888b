"""`rrr learn` and `rrr adapters`: the learner (mine, one cycle, schedule) and the adapter registry."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import typer

from cli.base import _data_dir, _engine_pool, _engine_urls, _session_factory, app, fail

# --- learner and adapters -------------------------------------------------------------------------------

learn_app = typer.Typer(
    help="The learner: mine failures, run one cycle now, or run on a schedule.", no_args_is_help=True
)
adapters_app = typer.Typer(
    help="LoRA adapters: list, activate, roll back (verified, loaded and probed before any flip).", no_args_is_help=True
)
app.add_typer(learn_app, name="learn")
app.add_typer(adapters_app, name="adapters")

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from learner.config import LearnerConfig
    from learner.cycle import CycleEvent, CycleResult
    from learner.mine import MineSummary
    from store.models import Adapter

_DB_OPT = typer.Option(
    None, "--database-url", help="SQLAlchemy URL; default $RRR_DATABASE_URL or SQLite under $RRR_DATA_DIR."
)
# The learner's flags override `learner.settings.LearnerSettings` (RRR_* variables, the RRR_CONFIG file); a flag
# left out keeps the setting, and an unset setting keeps the default of `learner.config`, which --help reads there.


def _default(cls: type, name: str) -> object:
    from dataclasses import MISSING, fields

    field = next(f for f in fields(cls) if f.name == name)
    return field.default if field.default is not MISSING else field.default_factory()  # type: ignore[operator]


def _opt(flag: str, env: str, text: str, default: tuple[type, str] | None = None) -> Any:
    """A learner flag: its help, the config default it falls back to, and the variable it overrides."""
    shown = f" Default {_default(*default)}." if default is not None else ""
    return typer.Option(None, flag, help=f"{text}{shown} Env: {env}.")


def _learner_defaults() -> tuple[type, type]:
    from learner.config import GateConfig, LearnerConfig

    return LearnerConfig, GateConfig


_L, _G = _learner_defaults()
_ENGINES_OPT = typer.Option(
    [],
    "--engine-url",
    help="Serving engine URL (vLLM or `rrr engine serve`); repeat or comma-separate replicas. Env: RRR_ENGINE_URLS.",
)
_ROOT_OPT = _opt(
    "--adapters-root",
    "RRR_ADAPTERS_ROOT",
    "Folder of published adapters (default: adapters/ under $RRR_DATA_DIR); the engines must see it too.",
)
_MODEL_OPT = _opt(
    "--model", "RRR_MODEL", "Base model folder the engines serve (training and the gate's local engine use it)."
)
_BASE_OPT = _opt(
    "--base-model-name", "RRR_BASE_MODEL_NAME", "The engines' served base name (default: asked from the engines)."
)
_WORK_OPT = _opt(
    "--work-dir", "RRR_LEARNER_WORK_DIR", "Training outputs and checkpoints (default: learner/ under $RRR_DATA_DIR)."
)
_K_OPT = _opt(
    "--min-failures",
    "RRR_LEARN_MIN_FAILURES",
    "K: train only when at least this many new trainable failures exist.",
    (_L, "min_new_failures"),
)
_MARGIN_OPT = _opt(
    "--gate-margin",
    "RRR_GATE_MARGIN",
    "The lower end of the 95% paired interval of the held-out retry-success gain must be above this.",
    (_G, "margin"),
)
_TOL_OPT = _opt(
    "--gate-tolerance",
    "RRR_GATE_TOLERANCE",
    "A regression first-attempt drop larger than this must be ruled out (95% paired interval).",
    (_G, "tolerance"),
)
_MIN_ITEMS_OPT = _opt(
    "--gate-min-items", "RRR_GATE_MIN_ITEMS", "Fewer held-out items than this: no promotion.", (_G, "min_items")
)
_HELDOUT_OPT = _opt(
    "--heldout-fraction",
    "RRR_HELDOUT_FRACTION",
    "Share of the batch's failures held out for the gate.",
    (_L, "heldout_fraction"),
)
_REGRESSION_OPT = _opt(
    "--regression-limit",
    "RRR_REGRESSION_LIMIT",
    "Past successes the gate re-checks for forgetting (default: the dataset limit).",
)
_DRAIN_OPT = _opt(
    "--drain-s",
    "RRR_ADAPTER_DRAIN_S",
    "Seconds a replaced adapter stays loaded; cover the API deadline + policy TTL.",
    (_L, "drain_s"),
)
_RANK_OPT = _opt("--max-lora-rank", "RRR_MAX_LORA_RANK", "The engines' --max-lora-rank.", (_L, "max_lora_rank"))
_SHARE_OPT = _opt(
    "--max-client-share",
    "RRR_MAX_CLIENT_SHARE",
    "Largest share of a batch from one client key; 1.0 for single-tenant or mined data.",
    (_L, "max_client_share"),
)
_LIMIT_OPT = _opt("--dataset-limit", "RRR_DATASET_LIMIT", "Failures per training batch at most.", (_L, "dataset_limit"))
_TRAIN_OPT = _opt(
    "--train-config", "RRR_TRAIN_CONFIG", "JSON file of TrainConfig fields (default: the paper's defaults)."
)
_INTERVAL_OPT = _opt("--interval", "RRR_LEARN_INTERVAL_S", "Seconds between scheduled cycles.", (_L, "interval_s"))
_LAUNCHER_OPT = _opt(
    "--train-launcher",
    "RRR_TRAIN_LAUNCHER",
    "Command that starts the training process in place of `python`, e.g. "
    "'accelerate launch --num_processes 4' for multi-GPU training.",
)

_FLAG_SETTINGS = {
    "database_url": "database_url",
    "adapters_root": "adapters_root",
    "model": "model",
    "base_model_name": "base_model_name",
    "work_dir": "learner_work_dir",
    "min_failures": "learn_min_failures",
    "gate_margin": "gate_margin",
    "gate_tolerance": "gate_tolerance",
    "gate_min_items": "gate_min_items",
    "heldout_fraction": "heldout_fraction",
    "regression_limit": "regression_limit",
    "drain_s": "adapter_drain_s",
    "max_lora_rank": "max_lora_rank",
    "max_client_share": "max_client_share",
    "dataset_limit": "dataset_limit",
    "train_config": "train_config",
    "interval": "learn_interval_s",
    "train_launcher": "train_launcher",
}


def _learner_config(params: dict[str, object]) -> tuple[LearnerConfig, sessionmaker[Session]]:
    """The learner's config from a command's flags over `LearnerSettings`, and a session factory on its database."""
    from pydantic import ValidationError

    from learner.settings import LearnerSettings

    given: dict[str, object] = {
        _FLAG_SETTINGS[k]: v for k, v in params.items() if k in _FLAG_SETTINGS and v is not None
    }
    engine_url = params.get("engine_url")
    if isinstance(engine_url, list | tuple) and engine_url:
        given["engine_urls"] = _engine_urls(list(engine_url))
    try:
        settings = LearnerSettings(**given)  # type: ignore[arg-type]
        config = settings.learner_config()
    except ValidationError as exc:
        first = exc.errors()[0]
        fail(f"invalid setting {'.'.join(map(str, first['loc']))}: {first['msg']}")
    except ValueError as exc:
        fail(str(exc))
    _, sessions = _session_factory(config.database_url if settings.database_url else None)
    return config, sessions


@learn_app.command("mine")
def learn_mine(
    dataset: str = typer.Option(..., "--dataset", help="FORMAT:PATH with FORMAT xlam, bfcl, openai or countdown."),
    samples: int = typer.Option(
        8, "--samples", help="Answers sampled per query at most (sampling stops at the first failure)."
    ),
    engine_url: str = typer.Option(..., "--engine-url", help="The engine to sample from (vLLM or `rrr engine serve`)."),
    database_url: str | None = _DB_OPT,
    answers: str | None = typer.Option(None, "--answers", help="BFCL possible_answer file (default: BFCL's layout)."),
    temperature: float = typer.Option(1.0, "--temperature", help="Sampling temperature (above 0)."),
    max_tokens: int = typer.Option(256, "--max-tokens", help="Cap per sampled answer."),
    model: str | None = typer.Option(
        None, "--model", help="Adapter name to sample from (default: the engine's base model)."
    ),
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

    try:
        config = MineConfig(
            samples=samples,
            temperature=temperature,
            max_tokens=max_tokens,
            concurrency=concurrency,
            model=model,
            task=task,
            seed=seed,
        )
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
    ctx: typer.Context,
    database_url: str | None = _DB_OPT,
    engine_url: list[str] = _ENGINES_OPT,
    adapters_root: str | None = _ROOT_OPT,
    model: str | None = _MODEL_OPT,
    base_model_name: str | None = _BASE_OPT,
    work_dir: str | None = _WORK_OPT,
    min_failures: int | None = _K_OPT,
    gate_margin: float | None = _MARGIN_OPT,
    gate_tolerance: float | None = _TOL_OPT,
    gate_min_items: int | None = _MIN_ITEMS_OPT,
    heldout_fraction: float | None = _HELDOUT_OPT,
    regression_limit: int | None = _REGRESSION_OPT,
    drain_s: float | None = _DRAIN_OPT,
    max_lora_rank: int | None = _RANK_OPT,
    max_client_share: float | None = _SHARE_OPT,
    dataset_limit: int | None = _LIMIT_OPT,
    train_config: str | None = _TRAIN_OPT,
    train_launcher: str | None = _LAUNCHER_OPT,
    as_json: bool = typer.Option(False, "--json", help="Print the cycle's result as one JSON object."),
) -> None:
    """One learner cycle now: count failures, train, gate, and publish or record why not."""
    import asyncio
    import signal

    from tqdm import tqdm

    from learner.cycle import run_cycle

    config, sessions = _learner_config(ctx.params)
    pool = _engine_pool(config.engine_urls)
    steps = config.train.max_steps if config.train else None
    with tqdm(total=steps, desc="training", unit="step", disable=None, leave=False) as bar:

        def on_step(item: dict[str, object]) -> None:
            bar.update(1)
            bar.set_postfix({k: item[k] for k in ("reward", "loss") if isinstance(item.get(k), int | float)})

        def on_event(event: CycleEvent) -> None:
            if not as_json:
                bar.write(event.message, file=sys.stderr)

        async def go() -> CycleResult:
            # SIGTERM stops the cycle as Ctrl-C does: its run is marked interrupted, the lease released.
            task = asyncio.current_task()
            assert task is not None
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
            try:
                return await run_cycle(
                    config, session_factory=sessions, engines=pool, on_event=on_event, on_step=on_step
                )
            finally:
                await pool.aclose()

        try:
            result = asyncio.run(go())
        except (asyncio.CancelledError, KeyboardInterrupt):
            fail("stopped: the run was marked interrupted and the lease released; the next cycle continues it")
    _print_cycle(result, as_json)
    if result.status == "failed":
        fail(f"the learner cycle failed: {result.error}")


@learn_app.command("schedule")
def learn_schedule(
    ctx: typer.Context,
    interval: float | None = _INTERVAL_OPT,
    min_failures: int | None = _K_OPT,
    database_url: str | None = _DB_OPT,
    engine_url: list[str] = _ENGINES_OPT,
    adapters_root: str | None = _ROOT_OPT,
    model: str | None = _MODEL_OPT,
    base_model_name: str | None = _BASE_OPT,
    work_dir: str | None = _WORK_OPT,
    gate_margin: float | None = _MARGIN_OPT,
    gate_tolerance: float | None = _TOL_OPT,
    gate_min_items: int | None = _MIN_ITEMS_OPT,
    heldout_fraction: float | None = _HELDOUT_OPT,
    regression_limit: int | None = _REGRESSION_OPT,
    drain_s: float | None = _DRAIN_OPT,
    max_lora_rank: int | None = _RANK_OPT,
    max_client_share: float | None = _SHARE_OPT,
    dataset_limit: int | None = _LIMIT_OPT,
    train_config: str | None = _TRAIN_OPT,
    train_launcher: str | None = _LAUNCHER_OPT,
) -> None:
    """Run learner cycles every --interval seconds (one at a time across processes, by store lease) until Ctrl-C."""
    from learner.schedule import LearnerScheduler

    config, sessions = _learner_config(ctx.params)
    _engine_pool(config.engine_urls)  # fail fast on a missing engine
    scheduler = LearnerScheduler(
        config,
        session_factory=sessions,
        make_engines=lambda: _engine_pool(config.engine_urls),
        on_result=lambda r: _print_cycle(r, False),
        on_event=lambda e: typer.echo(e.message, err=True),
    )
    import signal

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)  # leaves the scheduler's loop; shutdown waits for a running cycle

    signal.signal(signal.SIGTERM, stop)
    typer.echo(f"learner scheduled every {interval:g}s (K={min_failures}); Ctrl-C stops it", err=True)
    scheduler.start(blocking=True)


def _adapter_row(adapter: Adapter) -> dict[str, object]:
    return {
        "name": adapter.name,
        "version": adapter.version,
        "status": adapter.status,
        "base_model": adapter.base_model,
        "run_id": adapter.run_id,
        "path": adapter.path,
        "created_at": adapter.created_at.isoformat() if adapter.created_at else None,
        "activated_at": adapter.activated_at.isoformat() if adapter.activated_at else None,
    }


@adapters_app.command("list")
def adapters_list(
    database_url: str | None = _DB_OPT,
    status: str | None = typer.Option(
        None, "--status", help="Only adapters with this status (candidate, active, retired, rejected)."
    ),
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


def _adapter_admin(
    action: str,
    name: str | None,
    database_url: str | None,
    engine_url: list[str],
    adapters_root: str | None,
    unload_after: float | None,
) -> None:
    import asyncio

    from adapters import serving
    from store import repos

    _, sessions = _session_factory(database_url)
    pool = _engine_pool(_engine_urls(engine_url))
    root = adapters_root or str(_data_dir() / "adapters")

    async def go() -> str:
        try:
            if action == "activate":
                assert name is not None
                flip = await serving.activate(name, session_factory=sessions, engines=pool, adapters_root=root)
            else:
                flip = await serving.rollback(session_factory=sessions, engines=pool, adapters_root=root)
            if flip.replaced and unload_after is not None:
                serving.schedule_unload(pool, sessions, flip.replaced, unload_after, adapters_root=root)
                await serving.wait_background_unloads()
            if not flip.changed and flip.active is None:
                return "no adapter is active: the base model serves and there is nothing to roll back"
            return f"{flip.active.name} is active" if flip.active else "no adapter is active: the base model serves"
        finally:
            await pool.aclose()

    try:
        typer.echo(asyncio.run(go()))
    except repos.AdapterNotFound:
        fail(f"no adapter named {name}; `rrr adapters list` shows them")
    except serving.ActivationError as exc:
        fail(f"{exc}; nothing changed")


_UNLOAD_OPT = typer.Option(
    None,
    "--unload-after",
    help=(
        "Wait this many seconds, then unload the replaced adapter (default: leave it loaded; the learner's next "
        "cycle unloads it after its drain period)."
    ),
)


@adapters_app.command("activate")
def adapters_activate(
    name: str = typer.Argument(..., help="The adapter to make active, e.g. rrr-v3."),
    database_url: str | None = _DB_OPT,
    engine_url: list[str] = _ENGINES_OPT,
    adapters_root: str | None = _ROOT_OPT,
    unload_after: float | None = _UNLOAD_OPT,
) -> None:
    """Verify, load and probe NAME on every engine, then make it active (the previous one is kept for rollback)."""
    _adapter_admin("activate", name, database_url, engine_url, adapters_root, unload_after)


@adapters_app.command("rollback")
def adapters_rollback(
    database_url: str | None = _DB_OPT,
    engine_url: list[str] = _ENGINES_OPT,
    adapters_root: str | None = _ROOT_OPT,
    unload_after: float | None = _UNLOAD_OPT,
) -> None:
    """Re-activate the adapter the active one replaced (reloading it first), or the base model."""
    _adapter_admin("rollback", None, database_url, engine_url, adapters_root, unload_after)
