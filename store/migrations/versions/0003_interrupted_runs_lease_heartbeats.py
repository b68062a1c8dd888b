"""interrupted runs and lease heartbeats

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

* training_runs.status may be `interrupted` (the process running it died or was stopped).
* training_runs.resumed_from / resumed_from_step: the interrupted run a run continues, and the
  checkpoint step its training resumed from.
* leases.heartbeat_at: the holder's last sign of life (a silent holder loses the lease before
  its expiry).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BEFORE = "status IN ('queued', 'running', 'succeeded', 'failed', 'promoted', 'rejected')"
_AFTER = "status IN ('queued', 'running', 'succeeded', 'failed', 'promoted', 'rejected', 'interrupted')"


def upgrade() -> None:
    with op.batch_alter_table("training_runs") as batch:
        batch.drop_constraint(op.f("ck_training_runs_status"), type_="check")
        batch.create_check_constraint(op.f("ck_training_runs_status"), _AFTER)
        batch.add_column(sa.Column("resumed_from", sa.String(length=36), nullable=True))
        batch.add_column(sa.Column("resumed_from_step", sa.Integer(), nullable=True))
    with op.batch_alter_table("leases") as batch:
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("leases") as batch:
        batch.drop_column("heartbeat_at")
    op.execute("UPDATE training_runs SET status = 'failed' WHERE status = 'interrupted'")
    with op.batch_alter_table("training_runs") as batch:
        batch.drop_column("resumed_from_step")
        batch.drop_column("resumed_from")
        batch.drop_constraint(op.f("ck_training_runs_status"), type_="check")
        batch.create_check_constraint(op.f("ck_training_runs_status"), _BEFORE)
