"""Which policy serves a request: the `rrr` alias, the base model, or a pinned adapter.

Called by the API on every chat request and by `GET /v1/models`. The registry (the active adapter,
the adapters a client may name) is read from the store into a ``Snapshot``. ``resolve`` and
``models`` answer from the snapshot they are given without any I/O; given none, they use the
current one, re-read (blocking) once it is older than ``ttl_s`` (one second by default), so an
activation or rollback takes effect within a second on every API replica without a restart. The
API re-reads in the background instead (``read``) and keeps answering from ``latest`` while the
store is slow or unreachable (``api.state.ModelResolver``, R6). This module does not load adapters
into engines (the publisher and the admin routes do) and does not write to the store.
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
class Snapshot:
    """The registry as read by one read that started at ``taken`` (monotonic seconds)."""

    active: str | None
    adapters: tuple[tuple[str, str, int], ...]  # (name, status, created unix seconds), oldest first
    taken: float


class PolicyResolver:
    """Maps client model names to engine model names, from a snapshot of the adapter registry."""

    def __init__(self, session_factory: Callable[[], Session], base_model: str, *, ttl_s: float = 1.0) -> None:
        self._session_factory = session_factory
        self.base_model = base_model
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._snapshot: Snapshot | None = None
        self._stale = False

    @property
    def latest(self) -> Snapshot | None:
        """The last snapshot read, whatever its age (None before the first read succeeded)."""
        return self._snapshot

    def invalidate(self) -> None:
        """The next ``resolve`` or ``models`` without a snapshot reads the registry again."""
        self._stale = True

    def read(self) -> Snapshot:
        """Read the registry now (blocking; the store's errors propagate) and keep it as ``latest``."""
        taken = time.monotonic()
        with self._session_factory() as session:
            active = get_active_adapter(session)
            rows = tuple(
                (a.name, a.status, int(a.created_at.timestamp()))
                for a in reversed(list_adapters(session))
                if a.status != "rejected"
            )
        snap = Snapshot(active=active.name if active else None, adapters=rows, taken=taken)
        with self._lock:
            if self._snapshot is None or self._snapshot.taken <= taken:  # never replaced by an older read
                self._snapshot = snap
                self._stale = False
        return snap

    def _current(self) -> Snapshot:
        snap = self._snapshot
        if snap is not None and not self._stale and time.monotonic() - snap.taken < self.ttl_s:
            return snap
        return self.read()

    def resolve(self, requested: str | None, snapshot: Snapshot | None = None) -> Resolved:
        """``None``/``"rrr"`` → the active adapter (or the base); the base name; a registered adapter."""
        snap = snapshot or self._current()
        if requested in (None, "", ALIAS):
            if snap.active is None:
                return Resolved(engine_model=self.base_model, adapter=None)
            return Resolved(engine_model=snap.active, adapter=snap.active)
        if requested == self.base_model:
            return Resolved(engine_model=self.base_model, adapter=None)
        if any(name == requested for name, _, _ in snap.adapters):
            return Resolved(engine_model=requested, adapter=requested)
        raise UnknownModel(requested)

    def models(self, snapshot: Snapshot | None = None) -> list[dict[str, Any]]:
        """OpenAI model cards: the alias first, then the base model, then the adapters (oldest first)."""
        snap = snapshot or self._current()
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
