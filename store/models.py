"""SQLAlchemy 2.0 models of the store: episodes, attempts, adapters, training runs, leases.

Repositories (``store.repos``) and the Alembic migrations' autogenerate check use these classes;
other packages read the returned objects. Column types here apply ``store.sanitize`` to every bound
string and JSON value and keep datetimes tz-aware UTC on both backends. This module holds no
queries and no business rules beyond what the database itself enforces (status values, one active
adapter).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeEngine

from store.records import ATTEMPT_KINDS, EPISODE_STATUSES, utcnow
from store.sanitize import clamp_int32, clean_json, clean_limited, clean_text

ADAPTER_STATUSES = ("candidate", "active", "retired", "rejected")
RUN_STATUSES = ("queued", "running", "succeeded", "failed", "promoted", "rejected", "interrupted")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """``timestamp with time zone``; values are stored as UTC and always read back tz-aware UTC.

    SQLite has no time zone type: it stores the UTC wall clock and returns naive values, which are
    marked UTC here. A naive value given to the store is taken to be UTC already.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class SafeString(TypeDecorator[str]):
    """``varchar(n)``: sanitised and cut to ``n`` characters (PostgreSQL enforces ``n``, SQLite not)."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return clean_limited(str(value), getattr(self.impl, "length", None))


class SafeText(TypeDecorator[str]):
    """Unbounded text, sanitised."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else clean_text(str(value))


class SafeInteger(TypeDecorator[int]):
    """32-bit ``integer``; values are clamped to its range (PostgreSQL enforces it, SQLite not)."""

    impl = Integer
    cache_ok = True

    def process_bind_param(self, value: int | None, dialect: Dialect) -> int | None:
        return None if value is None else clamp_int32(value)


class SafeJSON(TypeDecorator[Any]):
    """JSON on both backends; values sanitised; Python ``None`` is SQL NULL.

    PostgreSQL's ``json`` (not ``jsonb``) on purpose: it keeps the text as written, so object key
    order survives. Stored requests are re-rendered with the chat template for training, and
    ``jsonb`` would reorder tool schemas' keys, making training prompts differ from served ones.
    """

    impl = JSON
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        return dialect.type_descriptor(JSON(none_as_null=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else clean_json(value)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN (" + ", ".join(f"'{v}'" for v in values) + ")"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class TrainingRun(Base):
    """One learner run: queued → running → succeeded|failed → promoted|rejected (by the gate).

    ``interrupted``: the process running it was killed or stopped before it ended; the next cycle
    marks it so (``learner.cycle``) and continues it in a new run whose ``resumed_from`` names it.
    """

    __tablename__ = "training_runs"
    __table_args__ = (
        CheckConstraint(_in("status", RUN_STATUSES), name="status"),
        Index("ix_training_runs_status_created_at", "status", "created_at"),
        Index("ix_training_runs_created_at", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    status: Mapped[str] = mapped_column(SafeString(20), default="queued")
    config: Mapped[dict[str, Any] | None] = mapped_column(SafeJSON)
    dataset_size: Mapped[int | None] = mapped_column(SafeInteger)
    metrics: Mapped[list[dict[str, Any]] | None] = mapped_column(SafeJSON)
    gate_result: Mapped[dict[str, Any] | None] = mapped_column(SafeJSON)
    error: Mapped[str | None] = mapped_column(SafeText)
    adapter_name: Mapped[str | None] = mapped_column(SafeString(200))
    warm_start_from: Mapped[str | None] = mapped_column(SafeString(200))
    """The adapter this run trained on from (None: a fresh LoRA on the base model)."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    resumed_from: Mapped[str | None] = mapped_column(String(36))
    """The interrupted run this one continues (same data, same config, its checkpoints)."""
    resumed_from_step: Mapped[int | None] = mapped_column(SafeInteger)
    """The checkpoint step training resumed from (None: from step 0)."""


class Episode(Base):
    """One client request as served. ``served_status`` keeps the status before any feedback."""

    __tablename__ = "episodes"
    __table_args__ = (
        CheckConstraint(_in("status", EPISODE_STATUSES), name="status"),
        CheckConstraint(_in("served_status", EPISODE_STATUSES), name="served_status"),
        Index("ix_episodes_created_at_id", "created_at", "id"),
        Index("ix_episodes_status_created_at", "status", "created_at"),
        Index("ix_episodes_adapter_created_at", "adapter", "created_at"),
        Index("ix_episodes_task_created_at", "task", "created_at"),
        Index("ix_episodes_consumed_by_run", "consumed_by_run"),
        Index("ix_episodes_purpose_created_at", "purpose", "created_at"),
        Index("ix_episodes_failure_code_created_at", "failure_code", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    client_key_id: Mapped[str | None] = mapped_column(SafeString(64))
    task: Mapped[str | None] = mapped_column(SafeString(200))
    request_messages: Mapped[list[dict[str, Any]] | None] = mapped_column(SafeJSON)
    request_tools: Mapped[list[dict[str, Any]] | None] = mapped_column(SafeJSON)
    tool_choice: Mapped[Any] = mapped_column(SafeJSON, nullable=True)
    verifier: Mapped[dict[str, Any] | None] = mapped_column(SafeJSON)
    expected_calls: Mapped[list[dict[str, Any]] | None] = mapped_column(SafeJSON)
    model: Mapped[str | None] = mapped_column(SafeString(200))
    adapter: Mapped[str | None] = mapped_column(SafeString(200))
    status: Mapped[str] = mapped_column(SafeString(20))
    served_status: Mapped[str] = mapped_column(SafeString(20))
    latency_ms: Mapped[int | None] = mapped_column(SafeInteger)
    prompt_tokens: Mapped[int] = mapped_column(SafeInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(SafeInteger, default=0)
    error: Mapped[str | None] = mapped_column(SafeText)
    feedback_ok: Mapped[bool | None] = mapped_column(Boolean)
    feedback_reason: Mapped[str | None] = mapped_column(SafeText)
    feedback_expected_calls: Mapped[list[dict[str, Any]] | None] = mapped_column(SafeJSON)
    feedback_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    trainable: Mapped[bool] = mapped_column(Boolean, default=False)
    purpose: Mapped[str] = mapped_column(SafeString(16), default="traffic", server_default="traffic")
    """`traffic` may become training data; `eval` (evaluation traffic) never does."""
    consumed_by_run: Mapped[str | None] = mapped_column(String(36), ForeignKey("training_runs.id", ondelete="SET NULL"))
    failure_code: Mapped[str | None] = mapped_column(SafeString(32))
    """The failure code (``tools.verifiers.base.FAILURE_CODES``) of the episode's first failed
    attempt (None: its first attempt passed, or it got no answer)."""

    attempts: Mapped[list[Attempt]] = relationship(
        back_populates="episode", order_by="Attempt.index", cascade="all, delete-orphan", passive_deletes=True
    )
    tool_names: Mapped[list[EpisodeTool]] = relationship(cascade="all, delete-orphan", passive_deletes=True)


class Attempt(Base):
    """One model call of an episode (answer, reflection or retry) with its verdict."""

    __tablename__ = "attempts"
    __table_args__ = (CheckConstraint(_in("kind", ATTEMPT_KINDS), name="kind"),)

    episode_id: Mapped[str] = mapped_column(String(36), ForeignKey("episodes.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(SafeString(20))
    text: Mapped[str | None] = mapped_column(SafeText)
    tool_calls: Mapped[list[dict[str, Any]] | None] = mapped_column(SafeJSON)
    finish_reason: Mapped[str | None] = mapped_column(SafeString(40))
    ok: Mapped[bool | None] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(SafeText)
    details: Mapped[dict[str, Any] | None] = mapped_column(SafeJSON)
    code: Mapped[str | None] = mapped_column(SafeString(32))
    """A failed verdict's failure code; None for a passed one, a reflection, or a verdict stored before codes."""
    path: Mapped[str | None] = mapped_column(SafeString(200))
    """The argument the failure is about (``arguments.origin``), where one applies."""
    prompt_tokens: Mapped[int] = mapped_column(SafeInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(SafeInteger, default=0)
    latency_ms: Mapped[int | None] = mapped_column(SafeInteger)
    model: Mapped[str | None] = mapped_column(SafeString(200))
    adapter: Mapped[str | None] = mapped_column(SafeString(200))

    episode: Mapped[Episode] = relationship(back_populates="attempts")


class EpisodeTool(Base):
    """Tool names an episode involved (offered, called or expected), so "filter by tool" is indexed."""

    __tablename__ = "episode_tools"
    __table_args__ = (Index("ix_episode_tools_name_episode_id", "name", "episode_id"),)

    episode_id: Mapped[str] = mapped_column(String(36), ForeignKey("episodes.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(SafeString(200), primary_key=True)


class Adapter(Base):
    """A LoRA adapter version. At most one row is ``active`` (a partial unique index says so)."""

    __tablename__ = "adapters"
    __table_args__ = (
        CheckConstraint(_in("status", ADAPTER_STATUSES), name="status"),
        Index(
            "uq_adapters_one_active",
            "status",
            unique=True,
            sqlite_where=text("status = 'active'"),
            postgresql_where=text("status = 'active'"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version: Mapped[int] = mapped_column(Integer, unique=True)
    name: Mapped[str] = mapped_column(SafeString(200), unique=True)
    path: Mapped[str] = mapped_column(SafeText)
    base_model: Mapped[str] = mapped_column(SafeString(200))
    run_id: Mapped[str | None] = mapped_column(String(36), ForeignKey("training_runs.id", ondelete="SET NULL"))
    status: Mapped[str] = mapped_column(SafeString(20), default="candidate")
    metrics: Mapped[dict[str, Any] | None] = mapped_column(SafeJSON)
    manifest_sha256: Mapped[str | None] = mapped_column(String(64))
    previous_id: Mapped[int | None] = mapped_column(Integer, ForeignKey("adapters.id", ondelete="SET NULL"))
    warm_start_from: Mapped[str | None] = mapped_column(SafeString(200))
    """The adapter this one was trained on from (None: trained from the base model)."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Lease(Base):
    """A named lock with an expiry (one learner run at a time across schedulers, R17)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(SafeString(200), primary_key=True)
    holder: Mapped[str] = mapped_column(SafeString(200))
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    """The holder's last sign of life; a holder silent for longer than the caller's
    ``stale_after_s`` has lost the lease before ``expires_at`` (``store.runs.acquire_lease``)."""
