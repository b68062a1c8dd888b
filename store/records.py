"""Plain records of one served request (an episode) and its model calls (attempts).

The agent builds an ``EpisodeRecord`` per client request and hands it to ``store.writer``; the
writer spools records as JSON lines (``to_json``/``from_json``) when the database is down, and
``store.repos.record_episodes`` turns them into rows. Records hold plain data only (strings,
numbers, lists, dicts, one ``datetime``); this module does not touch the database, validate
tool calls, or sanitise values (``store.sanitize`` does that at storage time).
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, Literal, get_args

EpisodeStatus = Literal["first_ok", "retry_ok", "failed", "upstream_error", "rejected"]
"""The one list of episode statuses (the store's check constraint, the loop's outcome, the API)."""
AttemptKind = Literal["answer", "reflection", "retry"]
EpisodePurpose = Literal["traffic", "eval"]
"""`traffic` may become training data; `eval` (evaluation traffic) never does."""
EPISODE_STATUSES: tuple[str, ...] = get_args(EpisodeStatus)
ATTEMPT_KINDS: tuple[str, ...] = get_args(AttemptKind)
EPISODE_PURPOSES: tuple[str, ...] = get_args(EpisodePurpose)


def utcnow() -> datetime:
    """The current time, tz-aware UTC (every timestamp in the store is)."""
    return datetime.now(UTC)


def new_id() -> str:
    """A new episode/run id: a random UUID as a 36-character string."""
    return str(uuid.uuid4())


@dataclass
class AttemptRecord:
    """One model call of an episode. ``kind`` is ``answer``, ``reflection`` or ``retry``.

    The attempt's index in the episode is its position in ``EpisodeRecord.attempts`` (0-based).
    ``tool_calls`` is the parsed list of calls (OpenAI shape or ``{"name", "arguments"}``); the
    verdict (``ok``/``reason``/``details``) is ``None`` for a reflection, which is not verified.
    """

    kind: str
    text: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    finish_reason: str | None = None
    ok: bool | None = None
    reason: str | None = None
    details: dict[str, Any] | None = None
    code: str | None = None
    path: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: int | None = None
    model: str | None = None
    adapter: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AttemptRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class EpisodeRecord:
    """One client request as served: request, outcome, and its attempts in order.

    ``status`` is one of ``EPISODE_STATUSES``. ``messages``/``tools``/``tool_choice`` are the
    client's request; ``verifier`` the serialised verifier spec; ``expected_calls`` the reference
    answer if the client gave one. ``model``/``adapter`` say what served it (``adapter`` None = base
    model). Token totals default to the sum over attempts. ``trainable`` = a re-runnable verifier
    exists for this episode (set by the agent); ``purpose`` = ``eval`` for evaluation traffic, which
    is never trainable.
    """

    status: EpisodeStatus
    messages: list[dict[str, Any]] = field(default_factory=list)
    id: str = field(default_factory=new_id)
    created_at: datetime = field(default_factory=utcnow)
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    verifier: dict[str, Any] | None = None
    expected_calls: list[dict[str, Any]] | None = None
    task: str | None = None
    client_key_id: str | None = None
    model: str | None = None
    adapter: str | None = None
    latency_ms: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error: str | None = None
    trainable: bool = False
    purpose: EpisodePurpose = "traffic"
    attempts: list[AttemptRecord] = field(default_factory=list)

    def total_prompt_tokens(self) -> int:
        if self.prompt_tokens is not None:
            return self.prompt_tokens
        return sum(a.prompt_tokens or 0 for a in self.attempts)

    def total_completion_tokens(self) -> int:
        if self.completion_tokens is not None:
            return self.completion_tokens
        return sum(a.completion_tokens or 0 for a in self.attempts)

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (``created_at`` as ISO 8601 with offset)."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("attempts", "created_at")}
        data["created_at"] = self.created_at.isoformat()
        data["attempts"] = [a.to_json() for a in self.attempts]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EpisodeRecord:
        """Inverse of ``to_json``; unknown keys are ignored (spools written by a newer version)."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known and k not in ("attempts", "created_at")}
        created = data.get("created_at")
        if isinstance(created, str):
            stamp = datetime.fromisoformat(created)
            kwargs["created_at"] = stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
        kwargs["attempts"] = [AttemptRecord.from_json(a) for a in data.get("attempts") or []]
        return cls(**kwargs)
