"""The engine server's LoRA registry: names, integer ids, paths as sent, and engine-side lifetimes.

Who calls it: the load/unload routes and model routing of `engines.server.app`. It keeps
vLLM 0.33's semantics (docs/vllm.md §2.2-§2.8): a dict in insertion order; an in-place reload keeps
the entry's id and position; unload is registry-only, so requests already routed to an adapter keep
running on it. Unlike vLLM it does not leak: every load gets a fresh engine-side key, and a key that
no entry points at any more is unloaded from the engine once its last request has finished.

It does not read adapter files or talk HTTP; `release` hands stale keys back to the caller.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from dataclasses import dataclass


@dataclass
class LoraEntry:
    """One registered adapter as `/v1/models` shows it, plus the engine key that serves it now."""

    name: str
    int_id: int
    path: str
    """`lora_path` exactly as sent (the card's `root`)."""
    parent: str
    engine_key: str


class LoraRegistry:
    """Insertion-ordered adapters with per-name load locks and reference-counted engine keys."""

    def __init__(self) -> None:
        self._entries: dict[str, LoraEntry] = {}
        self._ids = itertools.count(1)
        self._keys = itertools.count(1)
        self._locks: dict[str, asyncio.Lock] = {}
        self._in_use: Counter[str] = Counter()

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def entries(self) -> list[LoraEntry]:
        return list(self._entries.values())

    def get(self, name: str) -> LoraEntry | None:
        return self._entries.get(name)

    def lock(self, name: str) -> asyncio.Lock:
        """Loads of one name run one at a time; different names run concurrently (as in vLLM)."""
        return self._locks.setdefault(name, asyncio.Lock())

    def new_engine_key(self, name: str) -> str:
        return f"{name}#{next(self._keys)}"

    def put(self, name: str, path: str, parent: str, engine_key: str) -> tuple[LoraEntry, str | None]:
        """Register or replace in place (same id, same position). Returns the entry and the old key."""
        old = self._entries.get(name)
        if old is not None:
            previous = old.engine_key
            old.path, old.parent, old.engine_key = path, parent, engine_key
            return old, previous
        entry = LoraEntry(name=name, int_id=next(self._ids), path=path, parent=parent, engine_key=engine_key)
        self._entries[name] = entry
        return entry, None

    def remove(self, name: str) -> LoraEntry | None:
        """Registry-only unload: the name disappears; its engine key lives while requests use it."""
        return self._entries.pop(name, None)

    def acquire(self, entry: LoraEntry) -> str:
        """Pin the entry's current engine key for one request."""
        self._in_use[entry.engine_key] += 1
        return entry.engine_key

    def release(self, key: str) -> bool:
        """Unpin; True when the key is now unused and no entry serves it (the engine may drop it)."""
        self._in_use[key] -= 1
        if self._in_use[key] <= 0:
            del self._in_use[key]
        return self.is_stale(key)

    def is_stale(self, key: str) -> bool:
        return self._in_use[key] == 0 and all(e.engine_key != key for e in self._entries.values())

    def in_use(self) -> list[str]:
        """Names of registered adapters with requests pinned to them (for the LoRA metric)."""
        return [e.name for e in self._entries.values() if self._in_use[e.engine_key] > 0]
