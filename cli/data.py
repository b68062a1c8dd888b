"""`rrr db` and `rrr tools`: the schema and the dataset converters."""

from __future__ import annotations

import logging

import typer

from cli.base import app, default_database_url, fail

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
tools_app = typer.Typer(help="Tool specs and dataset converters.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(tools_app, name="tools")


@db_app.command("upgrade")
def db_upgrade(
    database_url: str = typer.Option(
        None, "--database-url", help="SQLAlchemy URL; default $RRR_DATABASE_URL or SQLite under $RRR_DATA_DIR."
    ),
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
