"""evaluation traffic and compounding cycles

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

* episodes.purpose: `traffic` (the default: may become training data) or `eval` (sent by `rrr eval
  run` or any client with `rrr.purpose = "eval"`: never trained on, never a regression item).
* training_runs.warm_start_from / adapters.warm_start_from: the adapter a run started from (None:
  a fresh LoRA on the base model).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("episodes") as batch:
        batch.add_column(sa.Column("purpose", sa.String(length=16), nullable=False, server_default="traffic"))
    op.create_index("ix_episodes_purpose_created_at", "episodes", ["purpose", "created_at"], unique=False)
    with op.batch_alter_table("training_runs") as batch:
        batch.add_column(sa.Column("warm_start_from", sa.String(length=200), nullable=True))
    with op.batch_alter_table("adapters") as batch:
        batch.add_column(sa.Column("warm_start_from", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("adapters") as batch:
        batch.drop_column("warm_start_from")
    with op.batch_alter_table("training_runs") as batch:
        batch.drop_column("warm_start_from")
    op.drop_index("ix_episodes_purpose_created_at", table_name="episodes")
    with op.batch_alter_table("episodes") as batch:
        batch.drop_column("purpose")
