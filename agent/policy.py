"""Which policy serves a request: the `rrr` alias, the base model, or a pinned adapter.

Called by the API on every chat request and by `GET /v1/models`. The active adapter is read from
the store and cached for at most ``ttl_s`` (one second by default), so an activation or rollback
takes effect within a second on every API replica without a restart. This module does not load
adapters into engines (the publisher and the admin routes do) and does not write to the store.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from store.registry import get_active_adapter, list_adapters

ALIAS = "rrr"


class UnknownModel(LookupError):
    """The client named a model that is neither the alias, the base, nor a registered adapter."""


@dataclass(frozen=True)
class Resolved:
    """What to send to the engine (``engine_model``) and which adapter that is (None = base)."""

    engine_model: str
    adapter: str | None


@dataclass(frozen=True)
class _Snapshot:
    active: str | None
    adapters: tuple[tuple[str, str, int], ...]  # (name, status, created unix seconds)
    taken: float


class PolicyResolver:
    """Maps client model names to engine model names, from a snapshot of the adapter registry."""

    def __init__(self, session_factory: Callable[[], Session], base_model: str, *, ttl_s: float = 1.0) -> None:
        self._session_factory = session_factory
        self.base_model = base_model
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None

    def invalidate(self) -> None:
        with self._lock:
            self._snapshot = None

    def _current(self) -> _Snapshot:
        snap = self._snapshot
        if snap is not None and time.monotonic() - snap.taken < self.ttl_s:
            return snap
        with self._lock:
            snap = self._snapshot
            if snap is not None and time.monotonic() - snap.taken < self.ttl_s:
                return snap
            with self._session_factory() as session:
                active = get_active_adapter(session)
                rows = tuple(
                    (a.name, a.status, int(a.created_at.timestamp()))
                    for a in reversed(list_adapters(session))
                    if a.status != "rejected"
                )
                snap = _Snapshot(active=active.name if active else None, adapters=rows, taken=time.monotonic())
            self._snapshot = snap
            return snap

    def resolve(self, requested: str | None) -> Resolved:
        """``None``/``"rrr"`` → the active adapter (or the base); the base name; a registered adapter."""
        snap = self._current()
        if requested in (None, "", ALIAS):
            if snap.active is None:
                return Resolved(engine_model=self.base_model, adapter=None)
            return Resolved(engine_model=snap.active, adapter=snap.active)
        if requested == self.base_model:
            return Resolved(engine_model=self.base_model, adapter=None)
        if any(name == requested for name, _, _ in snap.adapters):
            return Resolved(engine_model=requested, adapter=requested)
        raise UnknownModel(requested)

    def models(self) -> list[dict[str, Any]]:
        """OpenAI model cards: the alias first, then the base model, then the adapters (oldest first)."""
        snap = self._current()
        now = int(time.time())
        cards: list[dict[str, Any]] = [
            {
                "id": ALIAS,
                "object": "model",
                "created": now,
                "owned_by": "rrr",
                "root": snap.active or self.base_model,
                "parent": None,
                "rrr": {"alias_of": snap.active or self.base_model},
            },
            {
                "id": self.base_model,
                "object": "model",
                "created": now,
                "owned_by": "rrr",
                "root": self.base_model,
                "parent": None,
            },
        ]
        for name, status, created in snap.adapters:
            cards.append(
                {
                    "id": name,
                    "object": "model",
                    "created": created,
                    "owned_by": "rrr",
                    "root": name,
                    "parent": self.base_model,
                    "rrr": {"status": status},
                }
            )
        return cards
