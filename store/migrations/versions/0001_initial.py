"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-21

The whole schema of docs/design.md, "Data model": episodes (+ attempts, episode_tools), adapters,
training_runs, leases. Types are spelled out here (not imported from store.models) so this file
never changes when the models do: migrations are append-only.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_TYPE = sa.JSON(none_as_null=True)  # json, not jsonb, on PostgreSQL: key order is kept


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )
    op.create_table(
        "training_runs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("config", JSON_TYPE, nullable=True),
        sa.Column("dataset_size", sa.Integer(), nullable=True),
        sa.Column("metrics", JSON_TYPE, nullable=True),
        sa.Column("gate_result", JSON_TYPE, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("adapter_name", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'promoted', 'rejected')",
            name=op.f("ck_training_runs_status"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_runs")),
    )
    op.create_index("ix_training_runs_created_at", "training_runs", ["created_at"], unique=False)
    op.create_index(
        "ix_training_runs_status_created_at", "training_runs", ["status", "created_at"], unique=False
    )

    op.create_table(
        "adapters",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("base_model", sa.String(length=200), nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("metrics", JSON_TYPE, nullable=True),
        sa.Column("manifest_sha256", sa.String(length=64), nullable=True),
        sa.Column("previous_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('candidate', 'active', 'retired', 'rejected')", name=op.f("ck_adapters_status")
        ),
        sa.ForeignKeyConstraint(
            ["previous_id"],
            ["adapters.id"],
            name=op.f("fk_adapters_previous_id_adapters"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["training_runs.id"],
            name=op.f("fk_adapters_run_id_training_runs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adapters")),
        sa.UniqueConstraint("name", name=op.f("uq_adapters_name")),
        sa.UniqueConstraint("version", name=op.f("uq_adapters_version")),
    )
    op.create_index(
        "uq_adapters_one_active",
        "adapters",
        ["status"],
        unique=True,
        sqlite_where=sa.text("status = 'active'"),
        postgresql_where=sa.text("status = 'active'"),
    )

    op.create_table(
        "episodes",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("client_key_id", sa.String(length=64), nullable=True),
        sa.Column("task", sa.String(length=200), nullable=True),
        sa.Column("request_messages", JSON_TYPE, nullable=True),
        sa.Column("request_tools", JSON_TYPE, nullable=True),
        sa.Column("tool_choice", JSON_TYPE, nullable=True),
        sa.Column("verifier", JSON_TYPE, nullable=True),
        sa.Column("expected_calls", JSON_TYPE, nullable=True),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("adapter", sa.String(length=200), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("served_status", sa.String(length=20), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("feedback_ok", sa.Boolean(), nullable=True),
        sa.Column("feedback_reason", sa.Text(), nullable=True),
        sa.Column("feedback_expected_calls", JSON_TYPE, nullable=True),
        sa.Column("feedback_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("trainable", sa.Boolean(), nullable=False),
        sa.Column("consumed_by_run", sa.String(length=36), nullable=True),
        sa.CheckConstraint(
            "served_status IN ('first_ok', 'retry_ok', 'failed', 'upstream_error', 'rejected')",
            name=op.f("ck_episodes_served_status"),
        ),
        sa.CheckConstraint(
            "status IN ('first_ok', 'retry_ok', 'failed', 'upstream_error', 'rejected')",
            name=op.f("ck_episodes_status"),
        ),
        sa.ForeignKeyConstraint(
            ["consumed_by_run"],
            ["training_runs.id"],
            name=op.f("fk_episodes_consumed_by_run_training_runs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_episodes")),
    )
    op.create_index("ix_episodes_adapter_created_at", "episodes", ["adapter", "created_at"], unique=False)
    op.create_index("ix_episodes_consumed_by_run", "episodes", ["consumed_by_run"], unique=False)
    op.create_index("ix_episodes_created_at_id", "episodes", ["created_at", "id"], unique=False)
    op.create_index("ix_episodes_status_created_at", "episodes", ["status", "created_at"], unique=False)
    op.create_index("ix_episodes_task_created_at", "episodes", ["task", "created_at"], unique=False)

    op.create_table(
        "attempts",
        sa.Column("episode_id", sa.String(length=36), nullable=False),
        sa.Column("index", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("text", sa.Text(), nullable=True),
        sa.Column("tool_calls", JSON_TYPE, nullable=True),
        sa.Column("finish_reason", sa.String(length=40), nullable=True),
        sa.Column("ok", sa.Boolean(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("details", JSON_TYPE, nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("adapter", sa.String(length=200), nullable=True),
        sa.CheckConstraint("kind IN ('answer', 'reflection', 'retry')", name=op.f("ck_attempts_kind")),
        sa.ForeignKeyConstraint(
            ["episode_id"], ["episodes.id"], name=op.f("fk_attempts_episode_id_episodes"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("episode_id", "index", name=op.f("pk_attempts")),
    )
    op.create_table(
        "episode_tools",
        sa.Column("episode_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(
            ["episode_id"],
            ["episodes.id"],
            name=op.f("fk_episode_tools_episode_id_episodes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("episode_id", "name", name=op.f("pk_episode_tools")),
    )
    op.create_index("ix_episode_tools_name_episode_id", "episode_tools", ["name", "episode_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_episode_tools_name_episode_id", table_name="episode_tools")

    op.drop_table("episode_tools")
    op.drop_table("attempts")
    op.drop_index("ix_episodes_task_created_at", table_name="episodes")
    op.drop_index("ix_episodes_status_created_at", table_name="episodes")
    op.drop_index("ix_episodes_created_at_id", table_name="episodes")
    op.drop_index("ix_episodes_consumed_by_run", table_name="episodes")
    op.drop_index("ix_episodes_adapter_created_at", table_name="episodes")

    op.drop_table("episodes")
    op.drop_index("uq_adapters_one_active", table_name="adapters")

    op.drop_table("adapters")
    op.drop_index("ix_training_runs_status_created_at", table_name="training_runs")
    op.drop_index("ix_training_runs_created_at", table_name="training_runs")

    op.drop_table("training_runs")
    op.drop_table("leases")
