"""Publishing a trained adapter: the versioned folder, its registry row, then load, probe, flip (R16, R19).

Called by the learner cycle (`publish_adapter` after a positive gate, `folder_versions` for folder
GC) and by `rrr adapters activate|rollback` (`schedule_unload` for `--unload-after`). Checking,
loading, probing and flipping a folder that already exists is serving-side and lives in
`agent.adapters` (also used by the API); this module is the writing side. The protocol, in order
(shared/vllm-contract.md §2.10):

1. Copy the trained adapter to `<root>/.rrr-v<N>.tmp/`: `adapter_config.json` and
   `adapter_model.safetensors` (plus an optional README). Pickle-based weights (`.bin`, `.pt`, ...)
   and symlinks are refused. `manifest.json` records the sha256 and size of every file; every file
   and the folder are fsync'd, then one `rename` makes `<root>/rrr-v<N>/` appear complete or not at all.
2. An `adapters` row (status `candidate`, the manifest's own sha256 stored with it).
3. `agent.adapters.prepare`: the folder passes `verify_adapter_dir` (against the row's manifest
   hash), is loaded under the NEW versioned name on every engine replica (never in place) and
   listed there, and every replica answers one temperature-0 probe on that name. Any failure:
   unload wherever it got loaded, mark the row `rejected` with the reason; users see nothing.
4. Flip the active pointer in one transaction (`store.registry.activate_adapter`).
5. The previous version stays loaded for `drain_s` (requests resolved just before the flip still
   name it; it must cover the API's request deadline plus its policy cache TTL), then is unloaded by
   a background task on the caller's event loop (`schedule_unload`). If the process ends first
   (`rrr learn run`), the next cycle's `cycle.unload_drained` does it. Both re-read the registry
   first and never unload the active adapter; a version re-activated meanwhile is reloaded.
6. Folders are deleted only by the cycle (`cycle.collect_folders`), for retired or rejected
   versions at least `keep_cycles` (default 2) publishes old, never the active one or its rollback
   target, never one an engine still lists.

Publishing holds no lock of its own: the learner calls it under its store lease (one publisher).
This module does not decide whether to publish (the gate does), does not train, and does not
activate or roll back registered adapters (`agent.adapters.activate` / `rollback`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from agent.adapters import (
    FOLDER_RE,
    MANIFEST,
    MANIFEST_FORMAT,
    OPTIONAL_FILES,
    PICKLE_SUFFIXES,
    REQUIRED_FILES,
    ActivationError,
    UnsafeAdapter,
    adapter_name,
    describe_failure,
    ensure_loaded,
    prepare,
    sha256_file,
    unload_everywhere,
    verify_adapter_dir,
)
from engines.base import ChatRequest, Engine, EngineError
from store import repos
from store.records import utcnow

log = logging.getLogger(__name__)

_TMP_RE = re.compile(r"^\.rrr-v([1-9][0-9]{0,8})\.tmp$")

SessionFactory = Callable[[], Session]


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


# --- folders ---------------------------------------------------------------------------------------

def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_adapter_source(source: str | os.PathLike[str]) -> list[Path]:
    """The files of a trained adapter to publish (or evaluate); raises `UnsafeAdapter` for pickle
    weights anywhere in the folder, symlinked adapter files, or a missing config or safetensors file."""
    source = Path(source)
    if not source.is_dir():
        raise UnsafeAdapter(f"{source.name} is not an adapter folder")
    for entry in sorted(source.rglob("*")):
        if entry.suffix.lower() in PICKLE_SUFFIXES:
            raise UnsafeAdapter(f"refusing {entry.name}: only safetensors weights are published (no pickles)")
    picked = []
    for name in (*REQUIRED_FILES, *OPTIONAL_FILES):
        entry = source / name
        if entry.is_symlink():
            raise UnsafeAdapter(f"refusing {name}: it is a symlink")
        if entry.is_file():
            picked.append(entry)
        elif name in REQUIRED_FILES:
            raise UnsafeAdapter(f"the adapter folder has no {name}")
    return picked


def folder_versions(root: Path) -> dict[int, Path]:
    """Versions present under `root`, as published folders or leftover temp folders."""
    found: dict[int, Path] = {}
    if root.is_dir():
        for entry in root.iterdir():
            match = FOLDER_RE.match(entry.name) or _TMP_RE.match(entry.name)
            if match:
                found[int(match.group(1))] = entry
    return found


def write_adapter_folder(source: str | os.PathLike[str], adapters_root: str | os.PathLike[str], version: int,
                         *, base_model: str, run_id: str | None = None) -> tuple[Path, str]:
    """Steps 1 of the protocol: `<root>/rrr-v<version>/` with its manifest; returns (path, manifest sha256).

    The folder appears by one rename of a complete, fsync'd temp folder, or not at all.
    """
    root = Path(adapters_root)
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    name = adapter_name(version)
    final = root / name
    if final.exists() or final.is_symlink():
        raise FileExistsError(f"{name} already exists under the adapters root")
    files = check_adapter_source(Path(source))
    tmp = root / f".{name}.tmp"
    if tmp.exists() or tmp.is_symlink():
        shutil.rmtree(tmp) if tmp.is_dir() and not tmp.is_symlink() else tmp.unlink()
    tmp.mkdir()
    try:
        entries: dict[str, dict[str, Any]] = {}
        for src in files:
            dst = tmp / src.name
            with src.open("rb") as fin, dst.open("wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
                fout.flush()
                os.fsync(fout.fileno())
            entries[src.name] = {"sha256": sha256_file(dst), "size": dst.stat().st_size}
        manifest = {"format": MANIFEST_FORMAT, "name": name, "version": version, "base_model": base_model,
                    "run_id": run_id, "created_at": utcnow().isoformat(), "files": entries}
        raw = json.dumps(manifest, indent=2, sort_keys=True).encode()
        with (tmp / MANIFEST).open("wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        _fsync_dir(tmp)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(root)
    return final, hashlib.sha256(raw).hexdigest()


# --- publish ------------------------------------------------------------------------------------

def _next_version(session_factory: SessionFactory, root: Path) -> int:
    with session_factory() as session:
        version = repos.next_adapter_version(session)
    on_disk = folder_versions(root)
    return max(version, max(on_disk, default=0) + 1)


def _reject(session_factory: SessionFactory, name: str, reason: str, metrics: dict[str, Any]) -> None:
    try:
        with session_factory() as session, session.begin():
            repos.set_adapter_status(session, name, "rejected", metrics={**metrics, "rejected_reason": reason})
    except Exception:  # the row stays a candidate; the next cycle rejects stale candidates
        log.exception("could not mark adapter %s rejected", name)


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
) -> PublishResult:
    """Publish a trained adapter and make it active, or reject it with nothing changed for users.

    Raises `UnsafeAdapter` (before any folder or row exists) for a source folder with pickle weights,
    symlinks or missing files; engine and probe failures are a `rejected` result, not an exception.
    """
    root = Path(adapters_root)
    root.mkdir(parents=True, exist_ok=True)
    check_adapter_source(Path(adapter_dir))  # refuse before taking a version number
    version = _next_version(session_factory, root.resolve())
    name = adapter_name(version)
    final, manifest_sha = write_adapter_folder(adapter_dir, root, version, base_model=base_model, run_id=run_id)
    row_metrics = dict(metrics or {})
    with session_factory() as session, session.begin():
        repos.create_adapter(session, name=name, version=version, path=str(final), base_model=base_model,
                             run_id=run_id, metrics=row_metrics, manifest_sha256=manifest_sha)
    result = PublishResult(name=name, version=version, status="rejected", path=str(final))
    try:
        _, result.probe = await prepare(engines, name, str(final), adapters_root=root, manifest_sha256=manifest_sha,
                                        probe_request=probe_request, probe_timeout_s=probe_timeout_s)
    except ActivationError as exc:
        result.reason = exc.reason
        await unload_everywhere(engines, name)
        _reject(session_factory, name, result.reason, row_metrics)
        log.warning("adapter %s rejected: %s", name, result.reason)
        return result
    try:
        with session_factory() as session, session.begin():
            current = repos.get_active_adapter(session)
            result.previous = current.name if current else None
            repos.activate_adapter(session, name)
            adapter = repos.get_adapter(session, name)
            if adapter is not None:
                adapter.metrics = {**row_metrics, "probe": result.probe}
    except Exception as exc:
        result.reason = f"the active pointer could not be flipped: {type(exc).__name__}"
        await unload_everywhere(engines, name)
        _reject(session_factory, name, result.reason, row_metrics)
        log.exception("adapter %s not activated", name)
        return result
    result.status = "active"
    log.info("adapter %s is active (previous: %s)", name, result.previous or "base model")
    if result.previous and unload_in_background:
        schedule_unload(engines, session_factory, result.previous, drain_s, adapters_root=root)
    return result


_background: set[asyncio.Task[None]] = set()


def schedule_unload(engines: Engine, session_factory: SessionFactory, name: str, drain_s: float, *,
                    adapters_root: str | os.PathLike[str]) -> None:
    """Unload `name` after `drain_s` on the running event loop, unless it is active again by then.

    A version re-activated while it was being unloaded is verified and loaded again at once.
    """
    async def later() -> None:
        await asyncio.sleep(drain_s)
        with session_factory() as session:
            adapter = repos.get_adapter(session, name)
            if adapter is None or adapter.status == "active":
                return
        await unload_everywhere(engines, name)
        with session_factory() as session:
            adapter = repos.get_adapter(session, name)
        if adapter is not None and adapter.status == "active":  # re-activated while we unloaded
            try:
                verified = await asyncio.to_thread(verify_adapter_dir, adapter.path, adapters_root,
                                                   manifest_sha256=adapter.manifest_sha256)
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
