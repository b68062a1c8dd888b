"""The serving side of the adapter lifecycle: load everywhere, probe, publish, activate, roll back,
drain, unload, collect old folders.

Called by the learner cycle (`publish_adapter` after a positive gate; the housekeeping functions at
the start and end of every cycle), `rrr adapters activate|rollback`, and the API's
`POST /v1/adapters/{name}/activate` and `/v1/adapters/rollback`. Torch-free: engines are reached
through `engines.base.Engine` only, so the API process can use all of it.

Publishing, in order:

1. `<root>/rrr-v<N>/` is written by `adapters.folder.write_adapter_folder` (complete or absent).
2. An `adapters` row (status `candidate`, the manifest's own sha256 stored with it).
3. `prepare`: the folder passes `verify_adapter_dir` (against the row's manifest hash), is loaded
   under the NEW versioned name on every engine replica (never in place) and listed there, and every
   replica answers one temperature-0 probe on that name. Any failure: unload wherever it got
   loaded, mark the row `rejected` with the reason; users see nothing.
4. `_flip`: the active pointer moves in one store transaction (`store.repos.activate_adapter`). The
   same flip serves `activate`; `rollback` flips back (`store.repos.rollback_adapter`), re-checking
   at commit that the registry still matches its plan. After a flip the new target is loaded again
   wherever an unload raced it. A failed flip keeps the loads: the commit may have happened.
5. The replaced version stays loaded for `drain_s` (requests resolved just before the flip still
   name it; it must cover the API's request deadline plus its policy cache TTL), then is unloaded by
   a background task on the caller's event loop (`schedule_unload`). If the process ends first, the
   next cycle's `unload_drained` does it. Both re-read the registry first and never unload the
   active adapter; a version re-activated meanwhile is reloaded.
6. Folders are deleted only by `collect_folders` (the cycle, under its lease), for retired or
   rejected versions at least `keep_cycles` publishes old, never the active one or its rollback
   target, never one an engine still lists.

Every database and filesystem call runs in a worker thread, off the event loop. Publishing holds no
lock of its own: the learner calls it under its store lease (one publisher). This module does not
decide whether to publish (the gate does) and does not train.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.orm import Session

from adapters.folder import (
    UnsafeAdapter,
    VerifiedAdapter,
    adapter_name,
    check_adapter_source,
    folder_versions,
    verify_adapter_dir,
    write_adapter_folder,
)
from engines.base import AdapterError, ChatRequest, Engine, EngineError, EngineTimeout
from store import repos
from store.db import read_with, write_with
from store.models import Adapter
from store.records import utcnow

log = logging.getLogger(__name__)

DEFAULT_PROBE = ChatRequest(messages=[{"role": "user", "content": "Reply with OK."}], temperature=0.0, max_tokens=16)

SessionFactory = Callable[[], Session]
FailureKind = Literal["rejected", "unsafe", "cannot_serve", "conflict"]


class ActivationError(RuntimeError):
    """An activation or rollback did not happen: the active pointer did not move (R19).

    `kind` says why, for callers that answer differently: `rejected` (the gate rejected the adapter),
    `unsafe` (its folder failed `verify_adapter_dir`; `reason` names files only), `cannot_serve` (a
    load or probe failed on some replica; `reason` carries the engine's words, for operators, not
    for API clients), `conflict` (the registry moved while the target was being loaded).
    """

    def __init__(self, name: str | None, kind: FailureKind, reason: str) -> None:
        subject = f"{name} cannot serve: " if kind in ("unsafe", "cannot_serve") else ""
        super().__init__(subject + reason)
        self.name = name
        self.kind = kind
        self.reason = reason


@dataclass(frozen=True)
class Flip:
    """What `activate` or `rollback` did. `active` serves now (None: the base model); `replaced` was
    active before (None: the base model); `changed` is False when the pointer was already there
    (activating the active adapter, or a rollback with nothing active)."""

    active: Adapter | None
    replaced: str | None
    changed: bool


@dataclass
class PublishResult:
    """What `publish_adapter` did: `active` (pointer flipped) or `rejected` (nothing changed for users)."""

    name: str
    version: int
    status: str
    path: str | None = None
    previous: str | None = None
    reason: str | None = None
    probe: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == "active"


# --- engines ----------------------------------------------------------------------------------


async def is_listed(engine: Engine, name: str) -> bool:
    """Whether `engine`'s `/v1/models` lists `name`."""
    return any(card.get("id") == name for card in await engine.list_models())


async def unload_quietly(engine: Engine, name: str) -> None:
    """Unload `name` from one engine; a 404 (not loaded) is fine, other failures are logged only."""
    try:
        await engine.unload_adapter(name)
    except AdapterError as exc:
        if exc.status != 404:
            log.warning("unloading %s failed: %s", name, exc.message)
    except EngineError as exc:
        log.warning("unloading %s failed: %s", name, exc)


async def unload_everywhere(engines: Engine, name: str) -> None:
    """Unload `name` from every replica that has it (an unknown name is not an error)."""
    for engine in engines.replicas():
        await unload_quietly(engine, name)


async def ensure_loaded(engines: Engine, name: str, path: str) -> list[Engine]:
    """Load `name` on every replica that does not list it yet; returns the replicas it loaded on.

    A replica must list `name` afterwards. On a failure the replicas loaded by this call are
    unloaded again and the error is raised. `path` must be a folder `verify_adapter_dir` accepted.
    """
    loaded: list[Engine] = []
    try:
        for engine in engines.replicas():
            if not await is_listed(engine, name):
                await engine.load_adapter(name, path)
                loaded.append(engine)
            if not await is_listed(engine, name):
                raise AdapterError(500, f"the engine does not list {name} after loading it", "InternalServerError")
    except BaseException:
        for engine in loaded:
            await unload_quietly(engine, name)
        raise
    return loaded


async def probe(
    engines: Engine, name: str, request: ChatRequest | None = None, *, timeout: float = 60.0
) -> dict[str, Any]:
    """One temperature-0 chat on `name` per replica; raises an `EngineError` if any fails.

    The answer must come from `name` itself, within `timeout` (enforced here too, whatever the engine).
    """
    base = request or DEFAULT_PROBE
    results = []
    for engine in engines.replicas():
        req = ChatRequest(
            messages=base.messages,
            model=name,
            tools=base.tools,
            tool_choice=base.tool_choice,
            temperature=0.0,
            max_tokens=base.max_tokens or 16,
            seed=base.seed,
        )
        try:
            result = await asyncio.wait_for(engine.chat(req, timeout=timeout), timeout + 1.0)
        except TimeoutError:
            raise EngineTimeout(f"the probe of {name} got no answer within {timeout:g} s") from None
        if result.model and result.model != name:
            raise EngineError(f"the probe of {name} was answered by {result.model}")
        results.append(
            {
                "finish_reason": result.finish_reason,
                "latency_ms": round(result.latency_ms),
                "completion_tokens": result.completion_tokens,
            }
        )
    return {"replicas": len(results), "results": results}


def describe_failure(exc: BaseException) -> str:
    """One line for a failed load or probe (the engine's status, type and message)."""
    if isinstance(exc, AdapterError):
        return f"load failed ({exc.status} {exc.type}): {exc.message}"
    return f"{type(exc).__name__}: {exc}"


async def prepare(
    engines: Engine,
    name: str,
    path: str,
    *,
    adapters_root: str | os.PathLike[str],
    manifest_sha256: str | None,
    probe_request: ChatRequest | None = None,
    probe_timeout_s: float = 60.0,
) -> tuple[VerifiedAdapter, dict[str, Any]]:
    """Verify the folder, load `name` on every replica, probe each: (the verified folder, probe summary).

    Raises `ActivationError` (`unsafe` or `cannot_serve`) with the loads made by this call undone.
    """
    try:
        verified = await asyncio.to_thread(verify_adapter_dir, path, adapters_root, manifest_sha256=manifest_sha256)
    except UnsafeAdapter as exc:
        raise ActivationError(name, "unsafe", str(exc)) from exc
    try:
        loaded = await ensure_loaded(engines, name, verified.path)
    except EngineError as exc:
        raise ActivationError(name, "cannot_serve", describe_failure(exc)) from exc
    try:
        summary = await probe(engines, name, probe_request, timeout=probe_timeout_s)
    except EngineError as exc:
        for engine in loaded:
            await unload_quietly(engine, name)
        raise ActivationError(name, "cannot_serve", f"probe failed: {describe_failure(exc)}") from exc
    return verified, summary


async def _reload_after_flip(engines: Engine, name: str, path: str) -> None:
    """An unload that raced the flip (a drain finishing) is undone at once; the flip stands either way."""
    try:
        await ensure_loaded(engines, name, path)
    except EngineError as exc:
        log.error("%s is active but could not be reloaded on every engine: %s", name, describe_failure(exc))


# --- the flip: activate, rollback ------------------------------------------------------------


async def _flip(
    name: str,
    verified: VerifiedAdapter,
    *,
    session_factory: SessionFactory,
    engines: Engine,
    metrics: dict[str, Any] | None = None,
) -> Flip:
    """Move the active pointer to a prepared adapter in one transaction, then reload it wherever an
    unload raced the flip. The one activation flip: `activate` and `publish_adapter` both end here.
    `metrics` (publish) replaces the row's metrics in the same transaction."""

    def flip(session: Session) -> tuple[Adapter, str | None, bool]:
        current = repos.get_active_adapter(session)
        if current is not None and current.name == name:
            return current, None, False
        active = repos.activate_adapter(session, name)
        if metrics is not None:
            active.metrics = metrics
        return active, current.name if current else None, True

    active, replaced, changed = await asyncio.to_thread(write_with, session_factory, flip)
    await _reload_after_flip(engines, name, verified.path)
    return Flip(active=active, replaced=replaced, changed=changed)


async def activate(
    name: str,
    *,
    session_factory: SessionFactory,
    engines: Engine,
    adapters_root: str | os.PathLike[str],
    probe_request: ChatRequest | None = None,
    probe_timeout_s: float = 60.0,
) -> Flip:
    """Make a registered adapter active: verify, (re)load on every replica, probe, then flip (R19).

    Raises `store.repos.AdapterNotFound`, or `ActivationError` (`rejected`, `unsafe`,
    `cannot_serve`) with nothing changed. The replaced adapter stays loaded. `session_factory`
    must keep objects usable after commit (`store.db.make_session_factory`).
    """
    adapter = await asyncio.to_thread(read_with, session_factory, lambda s: repos.get_adapter(s, name))
    if adapter is None:
        raise repos.AdapterNotFound(name)
    if adapter.status == "rejected":
        raise ActivationError(name, "rejected", f"{name} was rejected by the evaluation gate and cannot be activated")
    verified, _ = await prepare(
        engines,
        name,
        adapter.path,
        adapters_root=adapters_root,
        manifest_sha256=adapter.manifest_sha256,
        probe_request=probe_request,
        probe_timeout_s=probe_timeout_s,
    )

    return await _flip(name, verified, session_factory=session_factory, engines=engines)


async def rollback(
    *,
    session_factory: SessionFactory,
    engines: Engine,
    adapters_root: str | os.PathLike[str],
    probe_request: ChatRequest | None = None,
    probe_timeout_s: float = 60.0,
) -> Flip:
    """Re-activate the adapter the active one replaced (verified, loaded and probed first), or the base model.

    With nothing active nothing changes (`changed` False). Raises `ActivationError` (`unsafe`,
    `cannot_serve`, or `conflict` when the registry moved meanwhile) with nothing changed.
    """
    current, target = await asyncio.to_thread(read_with, session_factory, repos.rollback_target)
    if current is None:
        return Flip(active=None, replaced=None, changed=False)
    verified = None
    if target is not None:
        verified, _ = await prepare(
            engines,
            target.name,
            target.path,
            adapters_root=adapters_root,
            manifest_sha256=target.manifest_sha256,
            probe_request=probe_request,
            probe_timeout_s=probe_timeout_s,
        )

    def flip(session: Session) -> Adapter | None:
        now_active = repos.get_active_adapter(session)
        if now_active is None or now_active.id != current.id:
            raise ActivationError(None, "conflict", "the active adapter changed during the rollback")
        restored = repos.rollback_adapter(session)
        if (restored.id if restored else None) != (target.id if target else None):
            raise ActivationError(None, "conflict", "the rollback target changed during the rollback")
        return restored

    restored = await asyncio.to_thread(write_with, session_factory, flip)
    if target is not None and verified is not None:
        await _reload_after_flip(engines, target.name, verified.path)
    return Flip(active=restored, replaced=current.name, changed=True)


# --- publish --------------------------------------------------------------------------------


def _next_version(session_factory: SessionFactory, root: Path) -> int:
    version = read_with(session_factory, repos.next_adapter_version)
    on_disk = folder_versions(root)
    return max(version, max(on_disk, default=0) + 1)


def _reject(session_factory: SessionFactory, name: str, reason: str, metrics: dict[str, Any]) -> None:
    try:
        with session_factory() as session, session.begin():
            repos.set_adapter_status(session, name, "rejected", metrics={**metrics, "rejected_reason": reason})
    except Exception:  # the row stays a candidate; the next cycle rejects stale candidates
        log.exception("could not mark adapter %s rejected", name)


@dataclass(frozen=True)
class Candidate:
    """A folder written under the adapters root and registered with status `candidate`."""

    name: str
    version: int
    path: Path
    manifest_sha256: str
    root: Path


async def register_candidate(
    adapter_dir: str | os.PathLike[str],
    *,
    adapters_root: str | os.PathLike[str],
    session_factory: SessionFactory,
    base_model: str,
    run_id: str | None = None,
    metrics: dict[str, Any] | None = None,
    warm_start_from: str | None = None,
) -> Candidate:
    """Steps 1-2 of publishing: the next version's folder, then its `candidate` row (never active).

    Raises `UnsafeAdapter` before taking a version number for a source with pickles, symlinks or
    missing files.
    """
    root = Path(adapters_root)
    await asyncio.to_thread(root.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(check_adapter_source, Path(adapter_dir))
    version = await asyncio.to_thread(_next_version, session_factory, root.resolve())
    name = adapter_name(version)
    final, manifest_sha = await asyncio.to_thread(
        write_adapter_folder, adapter_dir, root, version, base_model=base_model, run_id=run_id
    )
    await asyncio.to_thread(
        write_with,
        session_factory,
        lambda s: repos.create_adapter(
            s,
            name=name,
            version=version,
            path=str(final),
            base_model=base_model,
            run_id=run_id,
            metrics=dict(metrics or {}),
            manifest_sha256=manifest_sha,
            warm_start_from=warm_start_from,
        ),
    )
    return Candidate(name=name, version=version, path=final, manifest_sha256=manifest_sha, root=root)


async def publish_adapter(
    adapter_dir: str | os.PathLike[str],
    *,
    adapters_root: str | os.PathLike[str],
    session_factory: SessionFactory,
    engines: Engine,
    base_model: str,
    run_id: str | None = None,
    probe_request: ChatRequest | None = None,
    drain_s: float = 120.0,
    metrics: dict[str, Any] | None = None,
    probe_timeout_s: float = 60.0,
    unload_in_background: bool = True,
    warm_start_from: str | None = None,
) -> PublishResult:
    """Publish a trained adapter and make it active, or reject it with nothing changed for users.

    Raises `UnsafeAdapter` (before any folder or row exists) for a source folder with pickle weights,
    symlinks or missing files; engine and probe failures are a `rejected` result, not an exception.
    """
    staged = await register_candidate(
        adapter_dir,
        adapters_root=adapters_root,
        session_factory=session_factory,
        base_model=base_model,
        run_id=run_id,
        metrics=metrics,
        warm_start_from=warm_start_from,
    )
    name, row_metrics = staged.name, dict(metrics or {})
    result = PublishResult(name=name, version=staged.version, status="rejected", path=str(staged.path))

    async def refuse(reason: str) -> PublishResult:
        result.reason = reason
        await unload_everywhere(engines, name)
        await asyncio.to_thread(_reject, session_factory, name, reason, row_metrics)
        return result

    try:
        verified, result.probe = await prepare(
            engines,
            name,
            str(staged.path),
            adapters_root=staged.root,
            manifest_sha256=staged.manifest_sha256,
            probe_request=probe_request,
            probe_timeout_s=probe_timeout_s,
        )
    except ActivationError as exc:
        log.warning("adapter %s rejected: %s", name, exc.reason)
        return await refuse(exc.reason)
    try:
        flipped = await _flip(
            name,
            verified,
            session_factory=session_factory,
            engines=engines,
            metrics={**row_metrics, "probe": result.probe},
        )
    except Exception as exc:
        log.exception("adapter %s not activated", name)
        return await refuse(f"the active pointer could not be flipped: {type(exc).__name__}")
    result.status, result.previous = "active", flipped.replaced
    log.info("adapter %s is active (previous: %s)", name, result.previous or "base model")
    if result.previous and unload_in_background:
        schedule_unload(engines, session_factory, result.previous, drain_s, adapters_root=staged.root)
    return result


# --- drain and housekeeping -----------------------------------------------------------------

_background: set[asyncio.Task[None]] = set()


def schedule_unload(
    engines: Engine,
    session_factory: SessionFactory,
    name: str,
    drain_s: float,
    *,
    adapters_root: str | os.PathLike[str],
) -> None:
    """Unload `name` after `drain_s` on the running event loop, unless it is active again by then.

    A version re-activated while it was being unloaded is verified and loaded again at once.
    """

    async def later() -> None:
        await asyncio.sleep(drain_s)
        adapter = await asyncio.to_thread(read_with, session_factory, lambda s: repos.get_adapter(s, name))
        if adapter is None or adapter.status == "active":
            return
        await unload_everywhere(engines, name)
        adapter = await asyncio.to_thread(read_with, session_factory, lambda s: repos.get_adapter(s, name))
        if adapter is not None and adapter.status == "active":  # re-activated while we unloaded
            try:
                verified = await asyncio.to_thread(
                    verify_adapter_dir, adapter.path, adapters_root, manifest_sha256=adapter.manifest_sha256
                )
                await ensure_loaded(engines, name, verified.path)
            except (UnsafeAdapter, EngineError) as exc:
                log.error("%s is active again but could not be reloaded: %s", name, describe_failure(exc))
            return
        log.info("drained adapter %s unloaded", name)

    task = asyncio.get_running_loop().create_task(later())
    _background.add(task)
    task.add_done_callback(_background.discard)


async def wait_background_unloads() -> None:
    """Wait for the pending drain-then-unload tasks of this event loop (tests, orderly shutdown)."""
    loop = asyncio.get_running_loop()
    tasks = [t for t in _background if t.get_loop() is loop]
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)


async def cancel_background_unloads() -> None:
    """Cancel this event loop's pending drain-then-unload tasks (the next cycle's `unload_drained`
    does their work); used when a long-lived learner shuts down."""
    loop = asyncio.get_running_loop()
    tasks = [t for t in _background if t.get_loop() is loop and not t.done()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def unload_drained(engines: Engine, session_factory: SessionFactory, drain_s: float) -> list[str]:
    """Unload registered, non-active adapters the engines still list, once the last flip is `drain_s` old.

    Called at the start of each learner cycle, for unloads a previous process could not finish.
    Candidates are left alone (a publish may be under way); with no adapter active nothing is unloaded.
    """

    def idle_names(session: Session) -> set[str]:
        active = repos.get_active_adapter(session)
        if active is None or active.activated_at is None:
            return set()
        if (utcnow() - active.activated_at).total_seconds() < drain_s:
            return set()
        return {a.name for a in repos.list_adapters(session) if a.status in ("retired", "rejected")}

    idle = await asyncio.to_thread(read_with, session_factory, idle_names)
    if not idle:
        return []
    done: list[str] = []
    for engine in engines.replicas():
        try:
            listed = {str(card.get("id")) for card in await engine.list_models()}
        except EngineError as exc:
            log.warning("could not list an engine's adapters: %s", exc)
            continue
        for name in sorted(idle & listed):
            await unload_quietly(engine, name)
            done.append(name)
    return done


def reject_stale_candidates(session_factory: SessionFactory) -> list[str]:
    """Mark `candidate` rows rejected: under the learner's lease no publish is running, so a candidate
    is what an interrupted publish left behind."""
    with session_factory() as session, session.begin():
        stale = repos.list_adapters(session, status="candidate")
        for adapter in stale:
            repos.set_adapter_status(
                session,
                adapter.name,
                "rejected",
                metrics={**(adapter.metrics or {}), "rejected_reason": "publish interrupted"},
            )
        return [a.name for a in stale]


async def collect_folders(
    adapters_root: str | os.PathLike[str],
    session_factory: SessionFactory,
    engines: Engine | None = None,
    *,
    keep_cycles: int = 2,
) -> list[str]:
    """Delete folders of retired/rejected (or unregistered) versions `keep_cycles`+ publishes old.

    Never the active adapter, its rollback target, a version newer than that, or one an engine lists.
    Temp folders of interrupted publishes are removed too (call only under the learner's lease).
    """
    root = Path(adapters_root)
    if not await asyncio.to_thread(root.is_dir):
        return []

    def registry(session: Session) -> tuple[dict[int, Adapter], tuple[Adapter | None, Adapter | None]]:
        return {a.version: a for a in repos.list_adapters(session)}, repos.rollback_target(session)

    rows, (current, target) = await asyncio.to_thread(read_with, session_factory, registry)
    protected = {a.version for a in (current, target) if a is not None}
    listed: set[str] = set()
    if engines is not None:
        for engine in engines.replicas():
            with contextlib.suppress(EngineError):
                listed |= {str(card.get("id")) for card in await engine.list_models()}
    removed = await asyncio.to_thread(_remove_old_folders, root.resolve(), rows, protected, listed, keep_cycles)
    if removed:
        log.info("removed adapter folders: %s", ", ".join(removed))
    return removed


def _remove_old_folders(
    root: Path, rows: dict[int, Adapter], protected: set[int], listed: set[str], keep_cycles: int
) -> list[str]:
    found = folder_versions(root)
    published = [v for v, f in found.items() if not f.name.startswith(".")]
    newest = max([*rows, *published], default=0)
    removed = []
    for version, folder in sorted(found.items()):
        if folder.name.startswith("."):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
            continue
        row = rows.get(version)
        if version in protected or version > newest - keep_cycles - 1 or folder.name in listed:
            continue
        if row is not None and row.status not in ("retired", "rejected"):
            continue
        if folder.is_symlink() or folder.resolve().parent != root:
            continue
        shutil.rmtree(folder)
        removed.append(folder.name)
    return removed
