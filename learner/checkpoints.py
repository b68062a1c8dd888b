"""Crash-safe files of a training run: sealed checkpoints, metrics lines, atomically published adapters.

Used by `learner.train` (R18): a checkpoint counts only once its files are fsync'd and a `COMPLETE`
marker naming its step is written last; partial checkpoints are ignored or deleted; an adapter
folder appears by rename, complete or not at all. Pure file operations: no torch, no trainer. The
fsync helpers are the adapter folder's (`adapters.folder`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from adapters.folder import REQUIRED_FILES, fsync_dir, fsync_tree, remove_tree, write_atomic

log = logging.getLogger(__name__)

COMPLETE = "COMPLETE"
ADAPTER_FILES = REQUIRED_FILES
_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_step(path: Path) -> int | None:
    match = _CHECKPOINT_RE.match(path.name)
    return int(match.group(1)) if match else None


def is_complete_checkpoint(path: Path) -> bool:
    """Sealed by `seal_checkpoint` for its own step, with a readable trainer state and adapter."""
    step = checkpoint_step(path)
    if step is None or not path.is_dir():
        return False
    try:
        marker = json.loads((path / COMPLETE).read_text(encoding="utf-8"))
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(marker, dict)
        and marker.get("step") == step
        and state.get("global_step") == step
        and (path / "adapter_model.safetensors").is_file()
    )


def seal_checkpoint(path: Path, step: int) -> None:
    """Make a written checkpoint durable, then mark it complete (the marker is written last)."""
    fsync_tree(path)
    write_atomic(path / COMPLETE, json.dumps({"step": step}) + "\n")


def newest_complete_checkpoint(checkpoints: Path, *, delete_partial: bool = False) -> Path | None:
    """The complete checkpoint with the highest step; incomplete ones are ignored (or deleted)."""
    if not checkpoints.is_dir():
        return None
    best: tuple[int, Path] | None = None
    for path in checkpoints.iterdir():
        if path.name.startswith(".trash-"):
            if delete_partial:
                shutil.rmtree(path, ignore_errors=True)
            continue
        step = checkpoint_step(path)
        if step is None:
            continue
        if not is_complete_checkpoint(path):
            if delete_partial:
                log.warning("deleting incomplete checkpoint %s", path.name)
                remove_tree(path)
            continue
        if best is None or step > best[0]:
            best = (step, path)
    return best[1] if best else None


def prune_checkpoints(checkpoints: Path, keep: int) -> None:
    """Keep the `keep` newest complete checkpoints; drop older ones and partial ones below the newest."""
    complete = sorted((checkpoint_step(p) or 0, p) for p in checkpoints.iterdir() if is_complete_checkpoint(p))
    if not complete:
        return
    newest = complete[-1][0]
    for _, path in complete[:-keep]:
        remove_tree(path)
    for path in checkpoints.iterdir():
        step = checkpoint_step(path)
        if step is not None and step < newest and not (path / COMPLETE).exists():
            remove_tree(path)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            item = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash
        if isinstance(item, dict):
            out.append(item)
    return out


def truncate_metrics(path: Path, last_step: int) -> None:
    kept = [m for m in read_metrics(path) if int(m.get("step", 0)) <= last_step]
    if path.exists() or kept:
        write_atomic(path, "".join(json.dumps(m) + "\n" for m in kept))


def publish_adapter_files(source: Path, target: Path) -> None:
    """Copy exactly ADAPTER_FILES from `source` into a temp folder, fsync it, rename it to `target`."""
    missing = [name for name in ADAPTER_FILES if not (source / name).is_file()]
    if missing:
        raise RuntimeError(f"{source.name} has no {', '.join(missing)}; no adapter was published")
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for name in ADAPTER_FILES:
        shutil.copyfile(source / name, tmp / name)
    fsync_tree(tmp)
    remove_tree(target)
    os.replace(tmp, target)
    fsync_dir(target.parent)
