"""`rrr eval`: score predictions against a dataset."""

from __future__ import annotations

import typer

from cli.base import app, fail

eval_app = typer.Typer(help="Score and evaluate tool calls.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


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
