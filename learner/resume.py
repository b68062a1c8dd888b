"""Interrupted training runs: found and marked by the next cycle, and continued where they stopped (R18).

Who calls it: `learner.cycle.run_cycle`, under the learner lease, before it counts new failures.
Under the lease no cycle runs but the caller's, so a run still `queued`, `running` or `succeeded`
(trained, not yet gated) belongs to a process that died (kill -9, a lost machine); a run the
process marked `interrupted` itself (SIGTERM) is the same case, told. `find_interrupted` marks
the first kind `interrupted`, then decides whether the newest run of all can be continued:

* its work folder still holds the rows it trained on (`train.jsonl`) and its whole dataset
  (`dataset.json`: train, held-out and regression rows, written before training started), so the
  continued run trains and is gated on the same data;
* the configuration that decides the trained weights (`TRAINING_KEYS`) is the one in force now;
* no training process still runs in the folder (its `train.lock` is free);
* the adapter it warm-started from, if any, is still published and verified.

Then `continue_run` makes a new run (`resumed_from` = the interrupted one, its metrics up to the
newest complete checkpoint copied), renames the folder to the new run's, and the cycle trains
there: `learner.train` resumes from the newest complete checkpoint (or, trained already, returns
the adapter) and the gate and publish follow. Otherwise the reason is returned and the cycle
starts afresh. No torch, no engines.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapters import folder
from adapters.folder import fsync_dir, write_atomic
from learner.checkpoints import checkpoint_step, newest_complete_checkpoint
from store import repos
from store.db import read_with, write_with
from store.models import TrainingRun

if TYPE_CHECKING:
    from collections.abc import Callable

    from sqlalchemy.orm import Session

    from learner.config import LearnerConfig
    from learner.dataset import FailureDataset

log = logging.getLogger(__name__)

DATASET_FILE = "dataset.json"
TRAINING_KEYS = ("model_path", "train", "max_lora_rank")
"""The stored config keys that decide a run's trained weights: a run continues only under the same."""


@dataclass(frozen=True)
class Resumable:
    """An interrupted run the cycle can continue."""

    run_id: str
    work: Path
    dataset: FailureDataset
    step: int | None
    """The newest complete checkpoint's step (None: none yet, training restarts at step 0)."""
    trained: bool
    """Its adapter is already in the folder: only the gate and the publish remain."""
    warm: tuple[str, str] | None
    """The adapter it warm-started from (name, verified folder), None for a fresh LoRA."""


@dataclass
class Interrupted:
    """What `find_interrupted` found: runs it marked, the run to continue, or why not."""

    marked: list[str] = field(default_factory=list)
    resumable: Resumable | None = None
    reason: str | None = None
    """Why the newest run cannot be continued (None: it can, or there is nothing to continue)."""
    still_training: str | None = None
    """A training process still runs in the newest run's folder: the cycle waits for it."""


def save_dataset(work: Path, dataset: FailureDataset) -> None:
    """Write the whole dataset next to the training rows (atomically), before training starts."""
    data = {
        "train": dataset.train,
        "heldout": dataset.heldout,
        "regression": dataset.regression,
        "episode_ids": dataset.episode_ids,
    }
    work.mkdir(parents=True, exist_ok=True)
    write_atomic(work / DATASET_FILE, json.dumps(data, ensure_ascii=False, sort_keys=True) + "\n")


def load_dataset(work: Path) -> FailureDataset:
    from learner.dataset import FailureDataset

    data = json.loads((work / DATASET_FILE).read_text(encoding="utf-8"))
    return FailureDataset(
        train=data["train"], heldout=data["heldout"], regression=data["regression"], episode_ids=data["episode_ids"]
    )


def stage_of(run: TrainingRun) -> str:
    """Where an unfinished run stopped, in words."""
    if run.status == "queued":
        return "before training"
    if run.status == "running":
        return "during training"
    return "during the gate" if run.gate_result is None else "before its gate decision was applied"


def _training_process_alive(work: Path) -> bool:
    lock = work / "train.lock"
    if not lock.is_file():
        return False
    with lock.open("a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return False


def _config_change(stored: dict[str, Any] | None, current: dict[str, Any]) -> str | None:
    stored = stored or {}
    for key in TRAINING_KEYS:
        if stored.get(key) != current.get(key):
            return f"its {key} differs from the configuration in force"
    return None


def _warm_adapter(session_factory: Callable[[], Session], run: TrainingRun, adapters_root: str) -> tuple[str, str]:
    name = run.warm_start_from
    adapter = read_with(session_factory, lambda s: repos.get_adapter(s, name)) if name else None
    if adapter is None:
        raise LookupError(f"the adapter it started from ({name}) is no longer registered")
    verified = folder.verify_adapter_dir(adapter.path, adapters_root, manifest_sha256=adapter.manifest_sha256)
    return adapter.name, verified.path


def _resumable(
    run: TrainingRun, config: LearnerConfig, session_factory: Callable[[], Session]
) -> tuple[Resumable | None, str | None]:
    work = Path(config.work_dir) / run.id
    if not (work / "train.jsonl").is_file() or not (work / DATASET_FILE).is_file():
        return None, f"its work folder {work.name} no longer holds its rows and dataset"
    changed = _config_change(run.config, config.to_dict())
    if changed:
        return None, changed
    try:
        dataset = load_dataset(work)
    except (OSError, ValueError, KeyError) as exc:
        return None, f"its saved dataset cannot be read ({type(exc).__name__})"
    if not dataset.train:
        return None, "its saved dataset has no training rows"
    warm = None
    if run.warm_start_from:
        try:
            warm = _warm_adapter(session_factory, run, config.adapters_root)
        except (LookupError, folder.UnsafeAdapter) as exc:
            return None, str(exc)
    start = newest_complete_checkpoint(work / "checkpoints")
    step = checkpoint_step(start) if start is not None else None
    trained = (work / "adapter").is_dir() and (work / "result.json").is_file()
    return Resumable(run.id, work, dataset, step, trained, warm), None


def find_interrupted(config: LearnerConfig, session_factory: Callable[[], Session]) -> Interrupted:
    """Mark the unfinished runs `interrupted` and decide whether the newest run can continue (module doc)."""
    found = Interrupted()
    newest = read_with(session_factory, lambda s: repos.list_training_runs(s, limit=1))
    newest_run = newest[0] if newest else None
    unfinished = newest_run is not None and newest_run.status in repos.UNFINISHED_RUN_STATUSES
    if newest_run is not None and unfinished and _training_process_alive(Path(config.work_dir) / newest_run.id):
        found.still_training = newest_run.id
        return found

    def mark(session: Session) -> list[str]:
        ids = []
        for run in repos.unfinished_runs(session):
            repos.update_training_run(
                session, run.id, status="interrupted", error=f"interrupted {stage_of(run)}: its process stopped"
            )
            ids.append(run.id)
        return ids

    found.marked = write_with(session_factory, mark)
    if newest_run is None or (newest_run.status != "interrupted" and newest_run.id not in found.marked):
        return found
    found.resumable, found.reason = _resumable(newest_run, config, session_factory)
    return found


def continue_run(resumable: Resumable, config: LearnerConfig, session_factory: Callable[[], Session]) -> str:
    """A new run that continues `resumable` (same data, same config, its folder and checkpoints); its id."""

    def create(session: Session) -> str:
        old = repos.get_training_run(session, resumable.run_id)
        kept = [m for m in (old.metrics or []) if int(m.get("step", 0)) <= (resumable.step or 0)] if old else []
        run = repos.create_training_run(session, config=config.to_dict())
        run.metrics = kept
        repos.update_training_run(
            session,
            run.id,
            resumed_from=resumable.run_id,
            resumed_from_step=resumable.step,
            warm_start_from=resumable.warm[0] if resumable.warm else None,
        )
        return run.id

    run_id = write_with(session_factory, create)
    target = Path(config.work_dir) / run_id
    os.replace(resumable.work, target)
    fsync_dir(target.parent)
    log.info("run %s continues interrupted run %s in %s", run_id, resumable.run_id, target.name)
    return run_id
