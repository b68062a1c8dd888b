"""failure codes on verdicts and episodes

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

* attempts.code / attempts.path: a failed verdict's failure code (``FAILURE_CODES`` in
  tools/verifiers/base.py) and the argument it is about.
* episodes.failure_code (indexed with created_at): the code of the episode's first failed attempt,
  what ``GET /v1/episodes?failure=`` filters on and ``GET /v1/stats`` counts.

Back-fill: verdicts stored before codes existed get the code their reason text allows, by the
patterns below (the reasons rrr's verifiers wrote up to this revision); a reason none matches keeps
no code. The patterns are frozen here, as migrations are append-only.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# First match wins: the more specific patterns come first.
REASON_CODES: tuple[tuple[str, str], ...] = (
    (r"cut off at max_tokens", "truncated"),
    (r"malformed tool call|could not be parsed|is not a valid arithmetic expression", "parse_error"),
    (r"no <answer>", "parse_error"),
    (r"verification (budget|time)|was not checked: |timed out after|took longer than", "timeout"),
    (r'tool_choice is "none" but|no tool call was expected', "unexpected_call"),
    (r"made no tool call|expected a tool call, got none|^no prediction$", "no_call"),
    (r"names unknown tool|has no registered function", "unknown_tool"),
    (r"but tool_choice allows only|expected a call to '[^']*', got", "wrong_tool"),
    (r"expected \d+ tool call\(s\)|too many tool calls", "wrong_call_count"),
    (r"\(required\)|missing required parameter|missing parameter", "missing_argument"),
    (r"\(additionalProperties\)|unexpected parameter", "unexpected_argument"),
    (r"\(type\)|expected type |expected an? (string|integer|number|object|array|boolean)", "type_mismatch"),
    (r" raised ", "execution_error"),
    (r"must be used exactly once|may only contain digits", "rule_violation"),
    (r"no expected calls", "verifier_error"),
    (r"\((enum|pattern|minimum|maximum|exclusiveMinimum|exclusiveMaximum|minLength|maxLength|format|const|"
     r"minItems|maxItems|uniqueItems|multipleOf|not|anyOf|oneOf|allOf)\)", "schema_violation"),
    (r" is not |not the target", "wrong_value"),
)
_COMPILED = tuple((re.compile(pattern), code) for pattern, code in REASON_CODES)
_BATCH = 1000


def code_for(reason: str | None) -> str | None:
    if not reason:
        return None
    for pattern, code in _COMPILED:
        if pattern.search(reason):
            return code
    return None


def upgrade() -> None:
    with op.batch_alter_table("attempts") as batch:
        batch.add_column(sa.Column("code", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("path", sa.String(length=200), nullable=True))
    with op.batch_alter_table("episodes") as batch:
        batch.add_column(sa.Column("failure_code", sa.String(length=32), nullable=True))
    op.create_index(
        "ix_episodes_failure_code_created_at", "episodes", ["failure_code", "created_at"], unique=False
    )
    _backfill()


def _backfill() -> None:
    bind = op.get_bind()
    attempts = sa.table(
        "attempts",
        sa.column("episode_id", sa.String),
        sa.column("index", sa.Integer),
        sa.column("ok", sa.Boolean),
        sa.column("reason", sa.Text),
        sa.column("code", sa.String),
    )
    episodes = sa.table("episodes", sa.column("id", sa.String), sa.column("failure_code", sa.String))
    rows = bind.execute(
        sa.select(attempts.c.episode_id, attempts.c["index"], attempts.c.reason)
        .where(attempts.c.ok == sa.false())
        .order_by(attempts.c.episode_id, attempts.c["index"])
    ).all()
    first: dict[str, str | None] = {}
    updates = []
    for episode_id, index, reason in rows:
        code = code_for(reason)
        first.setdefault(episode_id, code)  # the episode's first failed attempt decides its code
        if code is not None:
            updates.append({"e": episode_id, "i": index, "c": code})
    set_code = (
        sa.update(attempts)
        .where(attempts.c.episode_id == sa.bindparam("e"), attempts.c["index"] == sa.bindparam("i"))
        .values(code=sa.bindparam("c"))
    )
    for start in range(0, len(updates), _BATCH):
        bind.execute(set_code, updates[start : start + _BATCH])
    set_failure = (
        sa.update(episodes).where(episodes.c.id == sa.bindparam("e")).values(failure_code=sa.bindparam("c"))
    )
    pairs = [{"e": e, "c": c} for e, c in first.items() if c is not None]
    for start in range(0, len(pairs), _BATCH):
        bind.execute(set_failure, pairs[start : start + _BATCH])


def downgrade() -> None:
    op.drop_index("ix_episodes_failure_code_created_at", table_name="episodes")
    with op.batch_alter_table("episodes") as batch:
        batch.drop_column("failure_code")
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("path")
        batch.drop_column("code")
