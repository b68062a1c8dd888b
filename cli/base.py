"""The root `rrr` app and what every command group shares: one-line failures, default locations."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

    from engines.pool import EnginePool

app = typer.Typer(help="rrr: a self-improving tool-calling backend (Reflect, Retry, Reward).", no_args_is_help=True)


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
    from engines.pool import EnginePool
    from engines.vllm import VLLMEngine

    if not urls:
        fail("no serving engine: give --engine-url URL (or set RRR_ENGINE_URLS)")
    key = os.environ.get("RRR_ENGINE_API_KEY") or None
    return EnginePool([VLLMEngine(url, key, name=f"engine-{i}") for i, url in enumerate(urls)])
