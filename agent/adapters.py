"""Published adapter folders on the serving side: the R16 check, loading into engines, the R19 flip.

Called by the learner's publisher (`learner.publish.publish_adapter`: `prepare` after writing a
folder), the learner cycle (`verify_adapter_dir` on the incumbent, `replicas` for housekeeping),
`rrr adapters activate|rollback` and the API's `POST /v1/adapters/{name}/activate` and
`/v1/adapters/rollback` (`activate`, `rollback`). It is the one definition of both, so what the
publisher writes is exactly what every loader accepts.

* `verify_adapter_dir` (R16): the resolved folder is a direct child of the resolved adapters root
  named `rrr-v<N>` (no `..` in the given path, the folder itself not a symlink), holds regular files
  only, exactly those its `manifest.json` lists (adapter config and safetensors weights among them,
  no pickle weights), every size and sha256 matches, and the manifest is the one the registry row
  recorded. Messages name the folder and its files, never a full path (R14).
* `prepare`: verify, load under the adapter's own name on every engine replica that does not list
  it yet (and check that it then does), probe each replica with one temperature-0 chat on that name.
  Any failure undoes this call's loads and raises `ActivationError`; nothing else changed.
* `activate` / `rollback` (R19): `prepare`, then flip the active pointer in one store transaction
  (a rollback re-checks at commit that the registry still matches its plan), then load again
  wherever an unload raced the flip. A failed flip keeps the loads: the commit may have happened.

Filesystem and database work runs in worker threads, off the event loop. The caller owns what
comes after a flip: invalidating caches (the API), unloading the replaced adapter after a drain
(`learner.publish.schedule_unload`). This module does not write adapter folders, create or reject
registry rows, unload anything on a timer or delete folders (all `learner.publish` / `learner.cycle`),
and it imports no torch: engines are reached through `engines.base.Engine` only.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from sqlalchemy.orm import Session

from engines.base import AdapterError, ChatRequest, Engine, EngineError, EngineTimeout
from engines.pool import EnginePool
from store import repos
from store.models import Adapter

log = logging.getLogger(__name__)
T = TypeVar("T")

ADAPTER_PREFIX = "rrr-v"
FOLDER_RE = re.compile(r"^rrr-v([1-9][0-9]{0,8})$")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "rrr-adapter/1"
REQUIRED_FILES = ("adapter_config.json", "adapter_model.safetensors")
OPTIONAL_FILES = ("README.md",)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz", ".h5")
DEFAULT_PROBE = ChatRequest(messages=[{"role": "user", "content": "Reply with OK."}], temperature=0.0,
                            max_tokens=16)

SessionFactory = Callable[[], Session]
FailureKind = Literal["rejected", "unsafe", "cannot_serve", "conflict"]


class UnsafeAdapter(ValueError):
    """An adapter folder that must not be loaded (outside the root, tampered, pickle weights...)."""


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
class VerifiedAdapter:
    """An adapter folder that passed `verify_adapter_dir`: its absolute path and manifest."""

    name: str
    path: str
    manifest: dict[str, Any]
    manifest_sha256: str


@dataclass(frozen=True)
class Flip:
    """What `activate` or `rollback` did. `active` serves now (None: the base model); `replaced` was
    active before (None: the base model); `changed` is False when the pointer was already there
    (activating the active adapter, or a rollback with nothing active)."""

    active: Adapter | None
    replaced: str | None
    changed: bool


# --- folders ---------------------------------------------------------------------------------------

def adapter_name(version: int) -> str:
    """The registry name and folder name of a version: `rrr-v<version>`."""
    return f"{ADAPTER_PREFIX}{version}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_adapter_dir(path: str | os.PathLike[str], adapters_root: str | os.PathLike[str], *,
                       manifest_sha256: str | None = None) -> VerifiedAdapter:
    """Check an adapter folder before anything loads it (R16); raises `UnsafeAdapter` with the reason.

    `path` is absolute or relative to the root. With `manifest_sha256` (the registry's copy) the
    manifest itself must be unchanged, so a manifest rewritten to match tampered files is caught.
    """
    raw = Path(path)
    if ".." in raw.parts:
        raise UnsafeAdapter("adapter paths must not contain '..'")
    try:
        root = Path(adapters_root).resolve(strict=True)
    except OSError:
        raise UnsafeAdapter("the adapters root does not exist (or is not mounted here)") from None
    given = raw if raw.is_absolute() else root / raw
    if given.is_symlink():
        raise UnsafeAdapter(f"{raw.name} is a symlink; adapter folders must be real folders under the root")
    try:
        real = given.resolve(strict=True)
    except OSError:
        raise UnsafeAdapter(f"no adapter folder {raw.name} under the adapters root") from None
    if real.parent != root:
        raise UnsafeAdapter(f"{raw.name} is not a folder directly under the adapters root")
    if not FOLDER_RE.match(real.name) or not real.is_dir():
        raise UnsafeAdapter(f"{real.name} is not a published adapter folder (rrr-v<N>)")
    manifest_path = real / MANIFEST
    if manifest_path.is_symlink():
        raise UnsafeAdapter(f"{real.name}/{MANIFEST} is not a regular file")
    try:
        manifest_raw = manifest_path.read_bytes()
        manifest = json.loads(manifest_raw)
    except (OSError, ValueError):
        raise UnsafeAdapter(f"{real.name} has no readable {MANIFEST}") from None
    digest = hashlib.sha256(manifest_raw).hexdigest()
    if manifest_sha256 is not None and digest != manifest_sha256:
        raise UnsafeAdapter(f"{real.name}: {MANIFEST} differs from the one recorded at publish time")
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise UnsafeAdapter(f"{real.name}: {MANIFEST} is not an rrr adapter manifest")
    try:
        _check_files(real, files)
    except OSError:
        raise UnsafeAdapter(f"{real.name}: its files cannot be read") from None
    return VerifiedAdapter(name=real.name, path=str(real), manifest=manifest, manifest_sha256=digest)


def _check_files(real: Path, files: dict[str, Any]) -> None:
    present: dict[str, Path] = {}
    for entry in real.iterdir():
        if entry.name == MANIFEST:
            continue
        if entry.is_symlink() or not entry.is_file():
            raise UnsafeAdapter(f"{real.name}/{entry.name} is not a regular file")
        if entry.suffix.lower() in PICKLE_SUFFIXES:
            raise UnsafeAdapter(f"{real.name}/{entry.name}: only safetensors weights are loaded (no pickles)")
        present[entry.name] = entry
    if set(present) != set(files):
        extra, missing = sorted(set(present) - set(files)), sorted(set(files) - set(present))
        raise UnsafeAdapter(f"{real.name}: files differ from the manifest (extra {extra}, missing {missing})")
    for name in REQUIRED_FILES:
        if name not in files:
            raise UnsafeAdapter(f"{real.name}: the manifest lists no {name}")
    for name, entry in present.items():
        expected = files[name]
        if (not isinstance(expected, dict) or entry.stat().st_size != expected.get("size")
                or sha256_file(entry) != expected.get("sha256")):
            raise UnsafeAdapter(f"{real.name}/{name}: contents do not match the manifest")


# --- engines -------------------------------------------------------------------------------------

def replicas(engines: Engine) -> list[Engine]:
    """The individual engines behind `engines` (an `EnginePool`'s replicas, or the engine itself)."""
    if isinstance(engines, EnginePool) and engines.replicas:
        return [replica.engine for replica in engines.replicas]
    return [engines]


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
    for engine in replicas(engines):
        await unload_quietly(engine, name)


async def ensure_loaded(engines: Engine, name: str, path: str) -> list[Engine]:
    """Load `name` on every replica that does not list it yet; returns the replicas it loaded on.

    A replica must list `name` afterwards. On a failure the replicas loaded by this call are
    unloaded again and the error is raised. `path` must be a folder `verify_adapter_dir` accepted.
    """
    loaded: list[Engine] = []
    try:
        for engine in replicas(engines):
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


async def probe(engines: Engine, name: str, request: ChatRequest | None = None, *,
                timeout: float = 60.0) -> dict[str, Any]:
    """One temperature-0 chat on `name` per replica; raises an `EngineError` if any fails.

    The answer must come from `name` itself, within `timeout` (enforced here too, whatever the engine).
    """
    base = request or DEFAULT_PROBE
    results = []
    for engine in replicas(engines):
        req = ChatRequest(messages=base.messages, model=name, tools=base.tools, tool_choice=base.tool_choice,
                          temperature=0.0, max_tokens=base.max_tokens or 16, seed=base.seed)
        try:
            result = await asyncio.wait_for(engine.chat(req, timeout=timeout), timeout + 1.0)
        except TimeoutError:
            raise EngineTimeout(f"the probe of {name} got no answer within {timeout:g} s") from None
        if result.model and result.model != name:
            raise EngineError(f"the probe of {name} was answered by {result.model}")
        results.append({"finish_reason": result.finish_reason, "latency_ms": round(result.latency_ms),
                        "completion_tokens": result.completion_tokens})
    return {"replicas": len(results), "results": results}


def describe_failure(exc: BaseException) -> str:
    """One line for a failed load or probe (the engine's status, type and message)."""
    if isinstance(exc, AdapterError):
        return f"load failed ({exc.status} {exc.type}): {exc.message}"
    return f"{type(exc).__name__}: {exc}"


async def prepare(engines: Engine, name: str, path: str, *, adapters_root: str | os.PathLike[str],
                  manifest_sha256: str | None, probe_request: ChatRequest | None = None,
                  probe_timeout_s: float = 60.0) -> tuple[VerifiedAdapter, dict[str, Any]]:
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


# --- activate, rollback --------------------------------------------------------------------------

def _read(session_factory: SessionFactory, work: Callable[[Session], T]) -> T:
    with session_factory() as session:
        return work(session)


def _write(session_factory: SessionFactory, work: Callable[[Session], T]) -> T:
    with session_factory() as session, session.begin():
        return work(session)


async def activate(name: str, *, session_factory: SessionFactory, engines: Engine,
                   adapters_root: str | os.PathLike[str], probe_request: ChatRequest | None = None,
                   probe_timeout_s: float = 60.0) -> Flip:
    """Make a registered adapter active: verify, (re)load on every replica, probe, then flip (R19).

    Raises `store.repos.AdapterNotFound`, or `ActivationError` (`rejected`, `unsafe`,
    `cannot_serve`) with nothing changed. The replaced adapter stays loaded. `session_factory`
    must keep objects usable after commit (`store.db.make_session_factory`).
    """
    adapter = await asyncio.to_thread(_read, session_factory, lambda s: repos.get_adapter(s, name))
    if adapter is None:
        raise repos.AdapterNotFound(name)
    if adapter.status == "rejected":
        raise ActivationError(name, "rejected", f"{name} was rejected by the evaluation gate and cannot be activated")
    verified, _ = await prepare(engines, name, adapter.path, adapters_root=adapters_root,
                                manifest_sha256=adapter.manifest_sha256, probe_request=probe_request,
                                probe_timeout_s=probe_timeout_s)

    def flip(session: Session) -> tuple[Adapter, str | None, bool]:
        current = repos.get_active_adapter(session)
        if current is not None and current.name == name:
            return current, None, False
        return repos.activate_adapter(session, name), current.name if current else None, True

    active, replaced, changed = await asyncio.to_thread(_write, session_factory, flip)
    await _reload_after_flip(engines, name, verified.path)
    return Flip(active=active, replaced=replaced, changed=changed)


async def rollback(*, session_factory: SessionFactory, engines: Engine, adapters_root: str | os.PathLike[str],
                   probe_request: ChatRequest | None = None, probe_timeout_s: float = 60.0) -> Flip:
    """Re-activate the adapter the active one replaced (verified, loaded and probed first), or the base model.

    With nothing active nothing changes (`changed` False). Raises `ActivationError` (`unsafe`,
    `cannot_serve`, or `conflict` when the registry moved meanwhile) with nothing changed.
    """
    current, target = await asyncio.to_thread(_read, session_factory, repos.rollback_target)
    if current is None:
        return Flip(active=None, replaced=None, changed=False)
    verified = None
    if target is not None:
        verified, _ = await prepare(engines, target.name, target.path, adapters_root=adapters_root,
                                    manifest_sha256=target.manifest_sha256, probe_request=probe_request,
                                    probe_timeout_s=probe_timeout_s)

    def flip(session: Session) -> Adapter | None:
        now_active = repos.get_active_adapter(session)
        if now_active is None or now_active.id != current.id:
            raise ActivationError(None, "conflict", "the active adapter changed during the rollback")
        restored = repos.rollback_adapter(session)
        if (restored.id if restored else None) != (target.id if target else None):
            raise ActivationError(None, "conflict", "the rollback target changed during the rollback")
        return restored

    restored = await asyncio.to_thread(_write, session_factory, flip)
    if target is not None and verified is not None:
        await _reload_after_flip(engines, target.name, verified.path)
    return Flip(active=restored, replaced=current.name, changed=True)
