"""Adapter registry rows: create, list, activate, roll back (the active pointer of docs/design.md, "Publish").

Called through ``store.repos`` by the learner's publisher and the API's adapter routes. Functions
take a ``Session`` and never commit; activation and rollback are a few UPDATEs in the caller's
transaction, so the pointer flips atomically when the caller commits. The database refuses a second
active adapter (partial unique index). This module does not touch adapter files or engines.

Rollback model: activating an adapter records the one it replaced in ``previous_id``; rollback
retires the active adapter and re-activates its ``previous_id`` (skipping rejected ones), or leaves
no adapter active (the base model serves) when there is none.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from store.models import ADAPTER_STATUSES, Adapter
from store.records import utcnow


class AdapterNotFound(LookupError):
    """No adapter with that name (the API answers 404)."""


def create_adapter(
    session: Session,
    *,
    name: str,
    version: int,
    path: str,
    base_model: str,
    run_id: str | None = None,
    metrics: dict[str, Any] | None = None,
    manifest_sha256: str | None = None,
    status: str = "candidate",
    warm_start_from: str | None = None,
) -> Adapter:
    """Register an adapter folder (as a candidate unless ``status`` says otherwise, never active)."""
    if status not in ADAPTER_STATUSES or status == "active":
        raise ValueError(f"a new adapter's status must be candidate, retired or rejected, not {status!r}")
    adapter = Adapter(
        name=name,
        version=version,
        path=path,
        base_model=base_model,
        run_id=run_id,
        metrics=metrics,
        manifest_sha256=manifest_sha256,
        status=status,
        warm_start_from=warm_start_from,
        created_at=utcnow(),
    )
    session.add(adapter)
    session.flush()
    return adapter


def next_adapter_version(session: Session) -> int:
    """One more than the highest version ever registered (1 for the first)."""
    highest = session.execute(select(func.max(Adapter.version))).scalar_one_or_none()
    return int(highest or 0) + 1


def get_adapter(session: Session, name: str) -> Adapter | None:
    return session.execute(select(Adapter).where(Adapter.name == name)).scalar_one_or_none()


def get_active_adapter(session: Session) -> Adapter | None:
    """The adapter in service, or None when the base model serves."""
    return session.execute(select(Adapter).where(Adapter.status == "active")).scalar_one_or_none()


def list_adapters(session: Session, *, status: str | None = None) -> list[Adapter]:
    """Adapters, newest version first."""
    stmt = select(Adapter).order_by(Adapter.version.desc())
    if status is not None:
        stmt = stmt.where(Adapter.status == status)
    return list(session.execute(stmt).scalars())


def set_adapter_status(session: Session, name: str, status: str, *, metrics: dict[str, Any] | None = None) -> Adapter:
    """Mark an adapter candidate/retired/rejected (use ``activate_adapter`` to make one active)."""
    if status not in ADAPTER_STATUSES or status == "active":
        raise ValueError(
            f"status must be candidate, retired or rejected (activate with activate_adapter), not {status!r}"
        )
    adapter = get_adapter(session, name)
    if adapter is None:
        raise AdapterNotFound(name)
    adapter.status = status
    if metrics is not None:
        adapter.metrics = metrics
    session.flush()
    return adapter


def _switch(session: Session, target: Adapter | None, *, previous_id: int | None, remember: bool) -> None:
    # Retire first, then activate: each UPDATE leaves at most one active row for the unique index.
    session.execute(
        update(Adapter).where(Adapter.status == "active").values(status="retired"),
        execution_options={"synchronize_session": "fetch"},
    )
    if target is not None:
        values: dict[str, Any] = {"status": "active", "activated_at": utcnow()}
        if remember:
            values["previous_id"] = previous_id
        session.execute(
            update(Adapter).where(Adapter.id == target.id).values(**values),
            execution_options={"synchronize_session": "fetch"},
        )
    session.flush()


def activate_adapter(session: Session, name: str) -> Adapter:
    """Make ``name`` the active adapter, retiring the current one and remembering it for rollback.

    Activating the adapter that is already active changes nothing. Raises ``AdapterNotFound``.
    """
    target = session.execute(select(Adapter).where(Adapter.name == name).with_for_update()).scalar_one_or_none()
    if target is None:
        raise AdapterNotFound(name)
    current = session.execute(select(Adapter).where(Adapter.status == "active").with_for_update()).scalar_one_or_none()
    if current is not None and current.id == target.id:
        return target
    _switch(session, target, previous_id=current.id if current else None, remember=True)
    session.refresh(target)
    return target


def _restorable(session: Session, current: Adapter) -> Adapter | None:
    """The adapter a rollback from ``current`` re-activates: its ``previous_id``, skipping rejected ones."""
    seen = {current.id}
    previous_id = current.previous_id
    while previous_id is not None and previous_id not in seen:
        seen.add(previous_id)
        candidate = session.get(Adapter, previous_id)
        if candidate is None:
            break
        if candidate.status != "rejected":
            return candidate
        previous_id = candidate.previous_id
    return None


def rollback_target(session: Session) -> tuple[Adapter | None, Adapter | None]:
    """(the active adapter, the one ``rollback_adapter`` would re-activate), changing and locking nothing.

    (None, None) when nothing is active; (active, None) when a rollback would leave the base model.
    Callers plan with it (load the target before the flip, keep its folder) and re-check at commit.
    """
    current = get_active_adapter(session)
    return (current, _restorable(session, current)) if current is not None else (None, None)


def rollback_adapter(session: Session) -> Adapter | None:
    """Re-activate the adapter that the active one replaced; returns it, or None if the base model now serves.

    With nothing active there is nothing to roll back and nothing changes.
    """
    current = session.execute(select(Adapter).where(Adapter.status == "active").with_for_update()).scalar_one_or_none()
    if current is None:
        return None
    target = _restorable(session, current)
    _switch(session, target, previous_id=None, remember=False)
    if target is not None:
        session.refresh(target)
    session.refresh(current)
    return target
