"""Episode repository: record, read, list (cursor pages), and late feedback.

Called through ``store.repos`` by the writer (``record_episodes``), the API's inspection and
feedback routes and the learner. Every function takes a ``Session`` and never commits: the caller
owns the unit of work. Statistics live in ``store.stats``; this module does not decide statuses
(the agent does) beyond applying client feedback.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Table, and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, selectinload

from store.models import Attempt, Episode, EpisodeTool
from store.records import ATTEMPT_KINDS, EPISODE_PURPOSES, EPISODE_STATUSES, EpisodeRecord, utcnow

#: Statuses that carry a model answer a client can judge (feedback may flip these).
ANSWERED_STATUSES = ("first_ok", "retry_ok", "failed")


@dataclass
class Page:
    """One page of a listing; pass ``next_cursor`` back to get the next page (None = last page)."""

    items: list[Episode]
    next_cursor: str | None


class InvalidCursor(ValueError):
    """The cursor was not produced by ``list_episodes`` (the API answers 400)."""


def _insert(session: Session, table: Table) -> Any:
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"the store supports SQLite and PostgreSQL, not {dialect}")


def _tool_names(record: EpisodeRecord) -> list[str]:
    """Names of tools offered, called (any attempt) or expected, in first-seen order."""
    names: dict[str, None] = {}

    def add(obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        function = obj.get("function")
        name = function.get("name") if isinstance(function, dict) else obj.get("name")
        if isinstance(name, str) and name:
            names.setdefault(name[:200], None)

    for tool in record.tools or []:
        add(tool)
    for attempt in record.attempts:
        for call in attempt.tool_calls or []:
            add(call)
    for call in record.expected_calls or []:
        add(call)
    return list(names)


def _validate(record: EpisodeRecord) -> None:
    if record.status not in EPISODE_STATUSES:
        raise ValueError(f"episode {record.id}: status {record.status!r} is not one of {EPISODE_STATUSES}")
    if not isinstance(record.id, str) or not 0 < len(record.id) <= 36:
        raise ValueError(f"episode id must be a string of 1-36 characters, got {record.id!r}")
    for attempt in record.attempts:
        if attempt.kind not in ATTEMPT_KINDS:
            raise ValueError(f"episode {record.id}: attempt kind {attempt.kind!r} is not one of {ATTEMPT_KINDS}")


def _episode_row(record: EpisodeRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "created_at": record.created_at,
        "client_key_id": record.client_key_id,
        "task": record.task,
        "request_messages": record.messages,
        "request_tools": record.tools,
        "tool_choice": record.tool_choice,
        "verifier": record.verifier,
        "expected_calls": record.expected_calls,
        "model": record.model,
        "adapter": record.adapter,
        "status": record.status,
        "served_status": record.status,
        "latency_ms": record.latency_ms,
        "prompt_tokens": record.total_prompt_tokens(),
        "completion_tokens": record.total_completion_tokens(),
        "error": record.error,
        "trainable": bool(record.trainable) and record.purpose != "eval",
        "purpose": record.purpose if record.purpose in EPISODE_PURPOSES else "traffic",
        "failure_code": next((a.code for a in record.attempts if a.ok is False), None),
    }


def record_episodes(session: Session, records: Iterable[EpisodeRecord]) -> int:
    """Insert episodes with their attempts; ids already stored are skipped. Returns how many were new.

    Idempotent on the episode id (INSERT ... ON CONFLICT DO NOTHING): attempts and tool names are
    inserted only for episodes this call inserted, so replaying a batch duplicates nothing.
    Raises ``ValueError`` for an invalid status/kind before touching the database.
    """
    unique: dict[str, EpisodeRecord] = {}
    for record in records:
        _validate(record)
        unique.setdefault(record.id, record)
    if not unique:
        return 0
    episodes = cast(Table, Episode.__table__)
    rows = [_episode_row(r) for r in unique.values()]
    # executemany: compiled once (cached); SQLAlchemy batches rows into multi-row VALUES itself
    stmt = _insert(session, episodes).on_conflict_do_nothing(index_elements=["id"]).returning(episodes.c.id)
    inserted = set(session.execute(stmt, rows).scalars())
    attempt_rows: list[dict[str, Any]] = []
    tool_rows: list[dict[str, Any]] = []
    for episode_id in inserted:
        record = unique[episode_id]
        tool_rows.extend({"episode_id": episode_id, "name": name} for name in _tool_names(record))
        for index, a in enumerate(record.attempts):
            attempt_rows.append(
                {
                    "episode_id": episode_id,
                    "index": index,
                    "kind": a.kind,
                    "text": a.text,
                    "tool_calls": a.tool_calls,
                    "finish_reason": a.finish_reason,
                    "ok": a.ok,
                    "reason": a.reason,
                    "details": a.details,
                    "code": a.code if a.ok is False else None,
                    "path": a.path if a.ok is False else None,
                    "prompt_tokens": a.prompt_tokens or 0,
                    "completion_tokens": a.completion_tokens or 0,
                    "latency_ms": a.latency_ms,
                    "model": a.model,
                    "adapter": a.adapter,
                }
            )
    for model, batch in ((Attempt, attempt_rows), (EpisodeTool, tool_rows)):
        if batch:
            session.execute(_insert(session, cast(Table, model.__table__)).on_conflict_do_nothing(), batch)
    return len(inserted)


def get_episode(session: Session, episode_id: str) -> Episode | None:
    """The episode with its attempts (ordered by index) and tool names loaded, or None."""
    stmt = (
        select(Episode)
        .where(Episode.id == episode_id)
        .options(selectinload(Episode.attempts), selectinload(Episode.tool_names))
    )
    return session.execute(stmt).scalar_one_or_none()


def encode_cursor(created_at: datetime, episode_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), episode_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, episode_id = json.loads(raw)
        created_at = datetime.fromisoformat(stamp)
        if not isinstance(episode_id, str) or created_at.tzinfo is None:
            raise ValueError("bad cursor fields")
    except (ValueError, TypeError, binascii.Error, json.JSONDecodeError) as exc:
        raise InvalidCursor("invalid cursor; pass back next_cursor from the previous page") from exc
    return created_at, episode_id


def list_episodes(
    session: Session,
    *,
    status: str | None = None,
    tool: str | None = None,
    adapter: str | None = None,
    task: str | None = None,
    failure: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    cursor: str | None = None,
    with_attempts: bool = False,
) -> Page:
    """Episodes newest first (by created_at, then id), filtered; ``since`` inclusive, ``until`` exclusive.

    Keyset pagination over (created_at, id): pages never repeat or skip a row, even while new
    episodes arrive. ``limit`` is clamped to 1..1000. Attempts are loaded only with
    ``with_attempts`` (one extra query per page); otherwise don't touch ``.attempts`` after the
    session is closed.
    """
    limit = max(1, min(int(limit), 1000))
    stmt = select(Episode)
    if status is not None:
        stmt = stmt.where(Episode.status == status)
    if adapter is not None:
        stmt = stmt.where(Episode.adapter == adapter)
    if task is not None:
        stmt = stmt.where(Episode.task == task)
    if failure is not None:
        stmt = stmt.where(Episode.failure_code == failure)
    if since is not None:
        stmt = stmt.where(Episode.created_at >= since)
    if until is not None:
        stmt = stmt.where(Episode.created_at < until)
    if tool is not None:
        with_tool = select(EpisodeTool.episode_id).where(EpisodeTool.name == tool)
        stmt = stmt.where(Episode.id.in_(with_tool))
    if cursor is not None:
        after_at, after_id = decode_cursor(cursor)
        stmt = stmt.where(
            or_(Episode.created_at < after_at, and_(Episode.created_at == after_at, Episode.id < after_id))
        )
    stmt = stmt.order_by(Episode.created_at.desc(), Episode.id.desc()).limit(limit + 1)
    if with_attempts:
        stmt = stmt.options(selectinload(Episode.attempts))
    rows = list(session.execute(stmt).scalars())
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id)
    return Page(items=rows, next_cursor=next_cursor)


def set_feedback(
    session: Session,
    episode_id: str,
    *,
    ok: bool,
    reason: str | None = None,
    expected_calls: list[dict[str, Any]] | None = None,
) -> Episode | None:
    """Record a client's late verdict on an episode; None if the id is unknown.

    The latest feedback wins. ``ok=False`` turns an answered episode (first_ok/retry_ok/failed)
    into ``failed``; ``ok=True`` restores the status it was served with (``served_status``), which
    undoes an earlier negative feedback. ``upstream_error``/``rejected`` episodes keep their status
    (there was no answer to judge). ``expected_calls`` become the episode's reference answer and
    make it trainable.
    """
    episode = session.get(Episode, episode_id, with_for_update=True)
    if episode is None:
        return None
    episode.feedback_ok = bool(ok)
    episode.feedback_reason = reason
    episode.feedback_at = utcnow()
    if expected_calls is not None:
        episode.feedback_expected_calls = expected_calls
        episode.expected_calls = expected_calls
        episode.trainable = episode.purpose != "eval"  # evaluation traffic never becomes training data
    if episode.served_status in ANSWERED_STATUSES:
        episode.status = episode.served_status if ok else "failed"
    session.flush()
    return episode


def mark_episodes_consumed(session: Session, episode_ids: Sequence[str], run_id: str) -> int:
    """Mark episodes as used by training run ``run_id`` (the learner, after promotion). Returns rows changed."""
    changed = 0
    for start in range(0, len(episode_ids), 500):
        chunk = list(episode_ids[start : start + 500])
        stmt = update(Episode).where(Episode.id.in_(chunk)).values(consumed_by_run=run_id)
        result = session.execute(stmt, execution_options={"synchronize_session": "fetch"})
        changed += cast(CursorResult[Any], result).rowcount
    return changed
