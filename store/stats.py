"""Success statistics over episodes, by adapter and by UTC day, and failure codes by tool, adapter
and day (``GET /v1/stats``).

Called through ``store.repos`` by the API and the eval tooling. Counting happens in SQL (conditional
sums, portable to SQLite and PostgreSQL; the only dialect-specific piece is the UTC day bucket,
compiled per backend); rates are derived from those counts. Rates use the current status, so client
feedback shows up here. This module does not write anything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, String, case, func, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from store.models import Episode, EpisodeTool
from store.records import EPISODE_STATUSES


class utc_day(FunctionElement[str]):
    """``YYYY-MM-DD`` of a timestamp in UTC."""

    type = String()
    inherit_cache = True
    name = "utc_day"


@compiles(utc_day, "sqlite")
def _utc_day_sqlite(element: utc_day, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite holds the UTC wall clock as 'YYYY-MM-DD HH:MM:SS.ffffff' (see models.UTCDateTime).
    return f"substr({compiler.process(element.clauses, **kw)}, 1, 10)"


@compiles(utc_day, "postgresql")
def _utc_day_postgresql(element: utc_day, compiler: SQLCompiler, **kw: Any) -> str:
    return f"to_char(({compiler.process(element.clauses, **kw)}) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"


@dataclass
class StatusCounts:
    """Episode counts per status for one group (``key``: adapter name, day, or None).

    ``first_attempt_rate`` = first_ok / answered; ``retry_rate`` = retry_ok / (retry_ok + failed),
    the success of the retry among episodes whose first attempt failed; ``success_rate`` =
    (first_ok + retry_ok) / answered; answered = first_ok + retry_ok + failed (upstream errors and
    rejected requests got no answer). A rate with a zero denominator is None.
    """

    key: str | None
    total: int = 0
    first_ok: int = 0
    retry_ok: int = 0
    failed: int = 0
    upstream_error: int = 0
    rejected: int = 0

    @property
    def answered(self) -> int:
        return self.first_ok + self.retry_ok + self.failed

    @property
    def first_attempt_rate(self) -> float | None:
        return self.first_ok / self.answered if self.answered else None

    @property
    def retry_rate(self) -> float | None:
        failed_first = self.retry_ok + self.failed
        return self.retry_ok / failed_first if failed_first else None

    @property
    def success_rate(self) -> float | None:
        return (self.first_ok + self.retry_ok) / self.answered if self.answered else None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            answered=self.answered,
            first_attempt_rate=self.first_attempt_rate,
            retry_rate=self.retry_rate,
            success_rate=self.success_rate,
        )
        return data


@dataclass
class EpisodeStats:
    """All episodes in the window, then per adapter (None = base model) and per UTC day."""

    overall: StatusCounts
    by_adapter: list[StatusCounts]
    by_day: list[StatusCounts]

    def to_dict(self) -> dict[str, Any]:
        return {
            "overall": self.overall.to_dict(),
            "by_adapter": [c.to_dict() for c in self.by_adapter],
            "by_day": [c.to_dict() for c in self.by_day],
        }


def _counting_columns() -> list[ColumnElement[Any]]:
    columns: list[ColumnElement[Any]] = [func.count().label("total")]
    for status in EPISODE_STATUSES:
        counted = func.sum(case((Episode.status == status, 1), else_=0))
        columns.append(func.coalesce(counted, 0).label(status))
    return columns


def _window(stmt: Select[Any], since: datetime | None, until: datetime | None) -> Select[Any]:
    if since is not None:
        stmt = stmt.where(Episode.created_at >= since)
    if until is not None:
        stmt = stmt.where(Episode.created_at < until)
    return stmt


def _counts(key: str | None, row: Any) -> StatusCounts:
    return StatusCounts(key, int(row.total), *(int(getattr(row, status)) for status in EPISODE_STATUSES))


def episode_stats(session: Session, *, since: datetime | None = None, until: datetime | None = None) -> EpisodeStats:
    """Counts and success rates for episodes with ``since <= created_at < until``."""
    overall_row = session.execute(_window(select(*_counting_columns()), since, until)).one()
    adapter_key = Episode.adapter.label("key")
    by_adapter = session.execute(
        _window(select(adapter_key, *_counting_columns()), since, until).group_by(Episode.adapter)
    ).all()
    day_key = utc_day(Episode.created_at).label("key")
    by_day = session.execute(
        _window(select(day_key, *_counting_columns()), since, until).group_by(day_key).order_by(day_key)
    ).all()
    adapters = sorted((_counts(row.key, row) for row in by_adapter), key=lambda c: (c.key is not None, c.key or ""))
    return EpisodeStats(
        overall=_counts(None, overall_row),
        by_adapter=adapters,
        by_day=[_counts(row.key, row) for row in by_day],
    )


def failure_stats(session: Session, *, since: datetime | None = None, until: datetime | None = None) -> dict[str, Any]:
    """Episodes per failure code (of their first failed attempt) in the window: overall, by tool
    (offered, called or expected), by adapter (None = base model) and by UTC day; biggest first."""
    count = func.count().label("episodes")
    code = Episode.failure_code.label("code")
    failing = Episode.failure_code.is_not(None)

    def rows(*keys: Any, join_tools: bool = False) -> list[Any]:
        stmt = select(*keys, code, count).where(failing)
        if join_tools:
            stmt = stmt.join(EpisodeTool, EpisodeTool.episode_id == Episode.id)
        stmt = _window(stmt, since, until).group_by(*keys, Episode.failure_code)
        return list(session.execute(stmt).all())

    by_code = sorted(rows(), key=lambda r: (-r.episodes, r.code))
    by_tool = sorted(rows(EpisodeTool.name.label("tool"), join_tools=True), key=lambda r: (-r.episodes, r.tool, r.code))
    by_adapter = sorted(rows(Episode.adapter.label("adapter")), key=lambda r: (-r.episodes, r.adapter or "", r.code))
    day = utc_day(Episode.created_at).label("day")
    by_day = sorted(rows(day), key=lambda r: (r.day, -r.episodes, r.code))
    return {
        "by_code": [{"code": r.code, "episodes": int(r.episodes)} for r in by_code],
        "by_tool": [{"tool": r.tool, "code": r.code, "episodes": int(r.episodes)} for r in by_tool],
        "by_adapter": [{"adapter": r.adapter, "code": r.code, "episodes": int(r.episodes)} for r in by_adapter],
        "by_day": [{"day": r.day, "code": r.code, "episodes": int(r.episodes)} for r in by_day],
    }
