"""Crash safety of training (R18): SIGKILL the training subprocess after a checkpoint, start it again.

The second run resumes from the newest COMPLETE checkpoint (a truncated checkpoint dir without its
marker is ignored and deleted), stores one metrics entry per step on the training run (the steps
redone after the checkpoint replace the lost ones), heartbeats, and publishes an adapter that loads.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

pytest.importorskip("trl")
pytestmark = pytest.mark.slow

from learner.checkpoints import (  # noqa: E402
    COMPLETE,
    checkpoint_step,
    is_complete_checkpoint,
    newest_complete_checkpoint,
)
from learner.config import TrainConfig  # noqa: E402
from learner.launch import launch_training  # noqa: E402
from learner.rows import write_rows  # noqa: E402
from learner.train import TrainingFailed  # noqa: E402
from store import repos  # noqa: E402
from tests.learner.conftest import TRAIN_TEMPLATES, task_rows  # noqa: E402


def test_sigkill_mid_run_then_resume_from_the_newest_complete_checkpoint(
    task_base_dir: Path,
    database_url: str,
    session_factory: sessionmaker[Session],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the child: one thread is fastest for a tiny model on a busy box
    with session_factory.begin() as s:
        repos.create_training_run(s, run_id="run-1")
        repos.update_training_run(s, "run-1", status="running")
    work = tmp_path / "work"
    write_rows(work / "train.jsonl", task_rows(TRAIN_TEMPLATES))
    config = TrainConfig(
        max_steps=10,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=1,
        num_generations=4,
        max_completion_length=8,
        retry_max_tokens=16,
        learning_rate=1e-3,
        save_steps=2,
        lora_r=8,
        lora_alpha=16,
        max_lora_rank=8,
        seed=0,
    )
    checkpoints = work / "checkpoints"

    outcome: dict[str, Any] = {}

    def first_run() -> None:
        try:
            outcome["result"] = launch_training(
                "run-1", database_url, str(task_base_dir), work, config, heartbeat_s=0.5, poll_s=0.05
            )
        except TrainingFailed as exc:
            outcome["error"] = str(exc)

    thread = threading.Thread(target=first_run)
    thread.start()
    deadline = time.monotonic() + 180
    while not list(checkpoints.glob(f"checkpoint-*/{COMPLETE}")):
        assert thread.is_alive() and time.monotonic() < deadline, outcome or (work / "train.log").read_text()[-3000:]
        time.sleep(0.05)
    os.kill(int((work / "train.pid").read_text()), signal.SIGKILL)
    thread.join(timeout=60)
    assert "killed by SIGKILL" in outcome.get("error", ""), outcome
    assert not (work / "adapter").exists()

    newest = newest_complete_checkpoint(checkpoints)
    assert newest is not None
    resume_step = checkpoint_step(newest)
    assert resume_step is not None and 2 <= resume_step < 10
    # A checkpoint cut short by a crash: files copied, weights truncated, no completion marker.
    truncated = checkpoints / f"checkpoint-{resume_step + 1}"
    shutil.copytree(newest, truncated)
    (truncated / COMPLETE).unlink()
    with (truncated / "adapter_model.safetensors").open("r+b") as fh:
        fh.truncate(100)
    # A marker that does not name its own step is not a completion marker either.
    forged = checkpoints / f"checkpoint-{resume_step + 3}"
    shutil.copytree(newest, forged)
    assert not is_complete_checkpoint(forged) and not is_complete_checkpoint(truncated)
    assert newest_complete_checkpoint(checkpoints) == newest

    seen: list[dict[str, Any]] = []
    result = launch_training(
        "run-1", database_url, str(task_base_dir), work, config, on_step=seen.append, heartbeat_s=0.5, poll_s=0.05
    )
    assert result.resumed_from_step == resume_step
    assert result.steps == 10
    assert not truncated.exists() and not forged.exists()
    assert [m["step"] for m in result.metrics] == list(range(1, 11))
    assert seen and seen[-1]["step"] == 10
    assert f"resuming from checkpoint-{resume_step}" in (work / "train.log").read_text()

    with session_factory() as s:
        run = repos.get_training_run(s, "run-1")
        assert run is not None and run.heartbeat_at is not None
        assert [m["step"] for m in run.metrics or []] == list(range(1, 11))
        assert {"loss", "reward_mean", "retry_success", "kl", "completion_tokens"} <= set((run.metrics or [])[-1])
        assert run.status == "running"  # statuses belong to the caller

    from engines.local import LocalEngine

    assert sorted(p.name for p in result.adapter_dir.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    engine = LocalEngine(str(task_base_dir), max_lora_rank=8, num_threads=1)
    asyncio.run(engine.load_adapter("resumed", str(result.adapter_dir)))
    assert json.loads((result.adapter_dir / "adapter_config.json").read_text())["r"] == 8

    # A finished run launched again returns its result without training.
    again = launch_training("run-1", database_url, str(task_base_dir), work, config)
    assert again.steps == 10 and again.adapter_dir == result.adapter_dir


def test_child_errors_come_back_as_training_failed(
    task_base_dir: Path, database_url: str, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    with session_factory.begin() as s:
        repos.create_training_run(s, run_id="run-2")
    work = tmp_path / "work"
    write_rows(work / "train.jsonl", task_rows(TRAIN_TEMPLATES))
    config = TrainConfig(
        max_steps=2,
        per_device_train_batch_size=8,
        gradient_accumulation_steps=1,
        num_generations=4,
        lora_r=8,
        max_lora_rank=8,
    )
    with pytest.raises(TrainingFailed, match="does-not-exist") as failure:
        launch_training(
            "run-2", database_url, str(tmp_path / "does-not-exist"), work, config, env={"OMP_NUM_THREADS": "1"}
        )
    assert "Traceback" not in str(failure.value)
    with pytest.raises(FileNotFoundError, match="write_rows"):
        launch_training("r", database_url, str(task_base_dir), tmp_path / "empty", config)
