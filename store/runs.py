"""Training-run rows and leases (the learner's bookkeeping and its one-run-at-a-time lock, R17).

Called through ``store.repos`` by the learner (runs, heartbeats, gate results, the scheduler's
lease) and the API's training-run routes. Functions take a ``Session`` and never commit.

Leases use the caller's clock (pass ``now`` in tests); hosts sharing a lease need synchronised
clocks. ``acquire_lease`` is one atomic ``INSERT ... ON CONFLICT DO UPDATE ... WHERE`` on both
backends: it takes the lease if it is free, expired, or already held by the same holder. This
module does not schedule or run training.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Table, case, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from store.models import RUN_STATUSES, Lease, TrainingRun
from store.records import new_id, utcnow

TERMINAL_RUN_STATUSES = ("succeeded", "failed", "promoted", "rejected", "interrupted")
UNFINISHED_RUN_STATUSES = ("queued", "running", "succeeded")
"""A cycle's run in one of these has not reached its end (``succeeded`` is trained, not yet gated)."""


class RunNotFound(LookupError):
    """No training run with that id."""


def create_training_run(
    session: Session,
    *,
    config: dict[str, Any] | None = None,
    dataset_size: int | None = None,
    run_id: str | None = None,
) -> TrainingRun:
    """A new run in status ``queued``."""
    run = TrainingRun(
        id=run_id or new_id(),
        status="queued",
        config=config,
        dataset_size=dataset_size,
        metrics=[],
        created_at=utcnow(),
    )
    session.add(run)
    session.flush()
    return run


def get_training_run(session: Session, run_id: str) -> TrainingRun | None:
    return session.get(TrainingRun, run_id)


def list_training_runs(session: Session, *, status: str | None = None, limit: int = 50) -> list[TrainingRun]:
    """Runs, newest first."""
    stmt = select(TrainingRun).order_by(TrainingRun.created_at.desc(), TrainingRun.id.desc())
    if status is not None:
        stmt = stmt.where(TrainingRun.status == status)
    return list(session.execute(stmt.limit(max(1, min(int(limit), 1000)))).scalars())


def _run(session: Session, run_id: str) -> TrainingRun:
    run = session.get(TrainingRun, run_id)
    if run is None:
        raise RunNotFound(run_id)
    return run


def update_training_run(
    session: Session,
    run_id: str,
    *,
    status: str | None = None,
    error: str | None = None,
    adapter_name: str | None = None,
    dataset_size: int | None = None,
    warm_start_from: str | None = None,
    resumed_from: str | None = None,
    resumed_from_step: int | None = None,
    now: datetime | None = None,
) -> TrainingRun:
    """Change a run's status and/or fields. ``running`` stamps started_at (and a heartbeat);
    a terminal status (succeeded/failed/promoted/rejected/interrupted) stamps finished_at once."""
    run = _run(session, run_id)
    now = now or utcnow()
    if status is not None:
        if status not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {RUN_STATUSES}, not {status!r}")
        run.status = status
        if status == "running":
            run.started_at = run.started_at or now
            run.heartbeat_at = now
        elif status in TERMINAL_RUN_STATUSES and run.finished_at is None:
            run.finished_at = now
    if error is not None:
        run.error = error
    if warm_start_from is not None:
        run.warm_start_from = warm_start_from
    if resumed_from is not None:
        run.resumed_from = resumed_from
    if resumed_from_step is not None:
        run.resumed_from_step = resumed_from_step
    if adapter_name is not None:
        run.adapter_name = adapter_name
    if dataset_size is not None:
        run.dataset_size = dataset_size
    session.flush()
    return run


def append_run_metrics(session: Session, run_id: str, step_metrics: dict[str, Any]) -> TrainingRun:
    """Append one step's metrics to the run's list (one writer per run: the learner)."""
    run = _run(session, run_id)
    run.metrics = [*(run.metrics or []), step_metrics]  # a new list: JSON columns don't track mutation
    session.flush()
    return run


def unfinished_runs(session: Session) -> list[TrainingRun]:
    """Runs in an ``UNFINISHED_RUN_STATUSES`` status, newest first. Under the learner lease no cycle
    runs but the caller's, so each of these was interrupted (its process died or was stopped)."""
    stmt = (
        select(TrainingRun)
        .where(TrainingRun.status.in_(UNFINISHED_RUN_STATUSES))
        .order_by(TrainingRun.created_at.desc(), TrainingRun.id.desc())
    )
    return list(session.execute(stmt).scalars())


def heartbeat_run(session: Session, run_id: str, *, now: datetime | None = None) -> TrainingRun:
    run = _run(session, run_id)
    run.heartbeat_at = now or utcnow()
    session.flush()
    return run


def set_gate_result(session: Session, run_id: str, gate_result: dict[str, Any]) -> TrainingRun:
    run = _run(session, run_id)
    run.gate_result = gate_result
    session.flush()
    return run


def _upsert(session: Session) -> Any:
    table = cast(Table, Lease.__table__)
    return postgresql.insert(table) if session.get_bind().dialect.name == "postgresql" else sqlite.insert(table)


def acquire_lease(
    session: Session,
    name: str,
    holder: str,
    ttl_s: float,
    *,
    stale_after_s: float | None = None,
    now: datetime | None = None,
) -> bool:
    """Take or extend lease ``name`` for ``holder`` for ``ttl_s`` seconds; False if someone else holds it.

    It is free when nobody holds it, when it expired, or (with ``stale_after_s``) when its holder
    has sent no heartbeat (``renew_lease``) for that long: a dead holder is recognised long before
    its expiry. Taking it stamps the heartbeat.
    """
    now = now or utcnow()
    stmt = _upsert(session).values(
        name=name, holder=holder, acquired_at=now, expires_at=now + timedelta(seconds=ttl_s), heartbeat_at=now
    )
    table = cast(Table, Lease.__table__)
    ours = table.c.holder == stmt.excluded.holder
    free = ours | (table.c.expires_at <= stmt.excluded.acquired_at)
    if stale_after_s is not None:
        last_sign = func.coalesce(table.c.heartbeat_at, table.c.acquired_at)
        free = free | (last_sign <= now - timedelta(seconds=stale_after_s))
    stmt = stmt.on_conflict_do_update(
        index_elements=["name"],
        set_={
            "holder": stmt.excluded.holder,
            "acquired_at": case((ours, table.c.acquired_at), else_=stmt.excluded.acquired_at),
            "expires_at": stmt.excluded.expires_at,
            "heartbeat_at": stmt.excluded.heartbeat_at,
        },
        where=free,
    ).returning(table.c.holder)
    taken = session.execute(stmt).scalar_one_or_none()
    return taken is not None


def renew_lease(session: Session, name: str, holder: str, ttl_s: float, *, now: datetime | None = None) -> bool:
    """Extend a lease ``holder`` still holds (not expired) and stamp its heartbeat; False if it
    expired or is someone else's (taken over, e.g. because its heartbeat went stale)."""
    now = now or utcnow()
    stmt = (
        update(Lease)
        .where(Lease.name == name, Lease.holder == holder, Lease.expires_at > now)
        .values(expires_at=now + timedelta(seconds=ttl_s), heartbeat_at=now)
    )
    result = cast(CursorResult[Any], session.execute(stmt, execution_options={"synchronize_session": False}))
    return result.rowcount == 1


def release_lease(session: Session, name: str, holder: str) -> bool:
    """Give the lease up; False if ``holder`` did not hold it (nothing changes then)."""
    stmt = delete(Lease).where(Lease.name == name, Lease.holder == holder)
    result = cast(CursorResult[Any], session.execute(stmt, execution_options={"synchronize_session": False}))
    return result.rowcount == 1


def get_lease(session: Session, name: str) -> Lease | None:
    """The lease row as stored now (re-read even if this session loaded it before), or None."""
    stmt = select(Lease).where(Lease.name == name).execution_options(populate_existing=True)
    return session.execute(stmt).scalar_one_or_none()
