"""`rrr eval`: score predictions against a dataset (`score`), or run a model through rrr and score it (`run`).

The harness itself lives in `evals`; these commands turn flags into its arguments.
"""

from __future__ import annotations

import re
import sys

import typer

from cli.base import app, fail

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")

eval_app = typer.Typer(help="Score and evaluate tool calls.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")

_SCORER_HELP = (
    "How answers are scored: reference (rrr's rules, BFCL's AST checker made consistent at every depth), "
    "bfcl (BFCL's own verdict, quirks included, comparable with the leaderboard) or exact (the paper's exact "
    "match of name and every argument)."
)


@eval_app.command("score")
def eval_score(
    dataset: str = typer.Option(..., "--dataset", help="FORMAT:PATH with FORMAT xlam, bfcl, openai or countdown."),
    predictions: str = typer.Option(..., "--predictions", help="JSON Lines of {id, tool_calls, content?}."),
    answers: str | None = typer.Option(None, "--answers", help="BFCL possible_answer file (default: BFCL's layout)."),
    scorer: str = typer.Option("reference", "--scorer", help=_SCORER_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Score a predictions file against a dataset's reference answers."""
    import json

    from evals import format_failures
    from tools.formats import load_dataset
    from tools.score import score_predictions
    from tools.scorers import check_scorer

    try:
        check_scorer(scorer)
        items = load_dataset(dataset, answers)
        report = score_predictions(items, predictions, scorer)
    except ValueError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(report.to_dict(), ensure_ascii=False))
        return
    rows = [
        ("total", str(report.total)),
        ("correct", str(report.correct)),
        ("accuracy", f"{report.accuracy:.2%}"),
        ("scorer", report.scorer),
    ]
    width = max(len(name) for name in ["accuracy", *report.categories])
    for name, value in rows:
        typer.echo(f"{name:<{width}}  {value}")
    if report.categories:
        typer.echo("")
        typer.echo(f"{'category':<{width}}  {'correct':>7}  {'total':>5}  accuracy")
        for name, cat in report.categories.items():
            typer.echo(f"{name:<{width}}  {cat['correct']:>7}  {cat['total']:>5}  {cat['accuracy']:.2%}")
    if report.failures:
        typer.echo("\n" + format_failures(report.failures, max(1, report.total), "failure code"))
    if report.unmatched:
        typer.echo(f"\n{len(report.unmatched)} predictions matched no dataset item", err=True)


def _model_names(names: list[str], *, base_url: str | None, model: str | None) -> tuple[list[str], dict[str, str]]:
    """The names to evaluate and, for --model DIR, the adapter folders among them (NAME=DIR)."""
    from pathlib import Path

    adapters: dict[str, str] = {}
    out: list[str] = []
    for raw in names:
        name, sep, path = raw.partition("=")
        name = name.strip()
        if not name:
            fail(f"--model-name {raw!r}: the name is empty")
        if sep:
            if base_url is not None:
                fail(
                    f"--model-name {raw!r}: NAME=ADAPTER_DIR needs --model DIR; with --base-url give the names "
                    "rrr serves (GET /v1/models)"
                )
            if not (Path(path) / "adapter_config.json").is_file():
                fail(f"--model-name {raw!r}: {path} is not an adapter folder (no adapter_config.json)")
            adapters[name] = str(Path(path).resolve())
        if name in out:
            fail(f"--model-name {name!r} is given twice")
        out.append(name)
    if not out:
        local = Path(str(model))
        out = ["rrr"] if base_url is not None else [local.resolve().name if local.is_dir() else str(model)]
    return out, adapters


@eval_app.command("run")
def eval_run(  # noqa: C901 (a command: flag checks, then one call per stage)
    dataset: str = typer.Option(..., "--dataset", help="FORMAT:PATH with FORMAT xlam, bfcl, openai or countdown."),
    answers: str | None = typer.Option(None, "--answers", help="BFCL possible_answer file (default: BFCL's layout)."),
    base_url: str | None = typer.Option(
        None, "--base-url", help="A running `rrr serve`, e.g. http://127.0.0.1:8000 (it reflects and retries itself)."
    ),
    api_key: str | None = typer.Option(
        None, "--api-key", envvar="RRR_API_KEY", show_envvar=True, help="Inference key for --base-url."
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        help="Local model directory (or Hugging Face id), run in-process with rrr's loop (needs the ml extra).",
    ),
    model_name: list[str] = typer.Option(
        [],
        "--model-name",
        help=(
            "Model or adapter to evaluate, repeatable (one table row each). With --base-url: names rrr serves "
            "(default `rrr`, the active policy). With --model: a label for the base model, or NAME=ADAPTER_DIR for "
            "a LoRA folder."
        ),
    ),
    attempts: int = typer.Option(
        2, "--attempts", help="Answer attempts per item: 2 = first try, then a retry after self-reflection."
    ),
    trainable: bool = typer.Option(
        False,
        "--trainable",
        help=(
            "With --base-url: let rrr train on this run's episodes (by default they are marked evaluation traffic, "
            "stored but never trained or gated on)."
        ),
    ),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N items of the dataset."),
    out: str = typer.Option(
        "rrr-eval",
        "--out",
        help="Output folder: items.jsonl, summary.json, table.md, chart.png. Rerunning with the same folder resumes.",
    ),
    max_tokens: int = typer.Option(512, "--max-tokens", help="Cap per answer."),
    temperature: float = typer.Option(0.0, "--temperature", help="Sampling temperature of the answers (0 = greedy)."),
    concurrency: int = typer.Option(
        4, "--concurrency", help="Items in flight at once (--base-url only; a local model runs one at a time)."
    ),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds per item (all its model calls)."),
    scorer: str | None = typer.Option(
        None, "--scorer", help=_SCORER_HELP + " Default: the --out folder's scorer, else reference."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object instead of the table."),
) -> None:
    """Run each item through rrr's reflect/retry loop and report accuracy at attempt 1 and 2 (paper style)."""
    import asyncio
    import json
    from pathlib import Path

    from tqdm import tqdm

    from evals import (
        EvalConfig,
        EvalRun,
        OutputError,
        Sampling,
        ServerRunner,
        TargetError,
        eval_tasks,
        format_failures,
        format_table,
        run_evaluation,
    )
    from evals.runners import Runner
    from tools.formats import load_dataset, split_spec

    if (base_url is None) == (model is None):
        fail(
            "give either --base-url URL (a running `rrr serve`) or --model DIR (a local model), not both"
            if base_url
            else "nothing to evaluate: give --base-url URL (a running `rrr serve`) or --model DIR (a local model)"
        )
    if limit is not None and limit < 1:
        fail(f"--limit must be at least 1, got {limit}")
    if max_tokens < 1 or timeout <= 0 or not 0.0 <= temperature <= 2.0:
        fail("--max-tokens must be at least 1, --timeout above 0 and --temperature between 0 and 2")
    try:
        config = EvalConfig(attempts=attempts, concurrency=concurrency if base_url else 1, scorer=scorer)
        fmt, path = split_spec(dataset)
        items = load_dataset(dataset, answers)
        if limit is not None:
            items = items[:limit]
        if not items:
            fail(f"{path}: the dataset has no items")
        tasks = eval_tasks(items)
    except ValueError as exc:
        fail(str(exc))
    names, adapters = _model_names(model_name, base_url=base_url, model=model)
    sampling = Sampling(temperature=temperature, max_tokens=max_tokens, timeout_s=timeout)
    runner: Runner
    if base_url is not None:
        runner = ServerRunner(base_url, api_key, sampling, trainable=trainable)
    else:
        if not Path(str(model)).is_dir() and not _HUB_ID.fullmatch(str(model)):
            fail(f"--model {model}: no such model directory (or Hugging Face model id)")
        try:
            from evals import local_runner

            runner = local_runner(str(model), served_name=names[0], adapters=adapters, sampling=sampling)
        except ImportError as exc:
            fail(f"--model needs the ml extra ({exc.name} is missing); install with: pip install -e '.[ml]'")
        except Exception as exc:  # one line for the operator
            fail(f"could not load the model {model}: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")
    spec = f"{fmt}:{Path(path).resolve()}"

    with tqdm(total=0, desc="evaluating", unit="item", disable=None) as bar:

        def started(todo: int, resumed: int) -> None:
            bar.total = todo
            bar.refresh()
            if resumed:
                bar.write(f"resuming: {resumed} results already in {out}", file=sys.stderr)

        def step(result: object) -> None:
            bar.update(1)

        async def go() -> EvalRun:
            try:
                return await run_evaluation(
                    tasks, runner, names, out, dataset=spec, config=config, on_start=started, on_item=step
                )
            finally:
                await runner.aclose()

        try:
            run = asyncio.run(go())
        except (TargetError, OutputError, ValueError) as exc:
            bar.close()
            fail(str(exc))
    if as_json:
        typer.echo(json.dumps(run.summary))
    else:
        typer.echo(format_table(run.summary))
        for row in run.summary["models"]:
            if row.get("first_failures"):
                title = f"{row['model']}: first-attempt failures"
                typer.echo("\n" + format_failures(row["first_failures"], max(1, row["n"]), title))
    reports = run.reports
    if reports is not None:
        files = [str(reports.summary.parent / "items.jsonl"), str(reports.summary), str(reports.table)]
        if reports.chart is not None:
            files.append(str(reports.chart))
        typer.echo("written: " + ", ".join(files), err=True)
        if reports.chart_note:
            typer.echo(f"note: {reports.chart_note}", err=True)
    if run.errors:
        model_, item, message = run.errors[0]
        fail(
            f"{len(run.errors)} item(s) could not be evaluated (first: item {item} on {model_}: {message}); "
            "rerun the same command to retry them"
        )
