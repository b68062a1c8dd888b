"""learner/resume.py through learner/cycle.py: a run its learner left unfinished (killed, or stopped
by a signal) is marked `interrupted` by the next cycle and continued in a new run with the same
data, the same config and its checkpoints; a stopped cycle releases the lease (issue 12 item 7).

Real store, real engines and the real gate, as in test_cycle.py; the trainers here are stand-ins
that seal a real checkpoint folder (`learner.checkpoints`) and then die, or hand back a real LoRA.
The slow test at the end kills a real `rrr learn run`-style cycle process with SIGKILL mid-training.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from engines.pool import EnginePool
from learner.checkpoints import seal_checkpoint
from learner.config import TrainConfig
from learner.cycle import CycleEvent, run_cycle
from store import repos
from tests.conftest import ToolModel
from tests.learner.test_cycle import (
    Factory,
    StandInTrainer,
    add_episodes,
    cycle,
    make_config,
    run_row,
)

pytest.importorskip("torch")
pytest.importorskip("peft")
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


class Killed(BaseException):
    """What kill -9 leaves behind, seen from the store: the process stops where it is, nothing of
    the cycle's error handling runs (a BaseException passes every `except Exception`)."""


class DiesAfterCheckpoint(StandInTrainer):
    """Seals a real checkpoint-<step> in the run's folder, then dies."""

    def __init__(self, adapter: Path, step: int) -> None:
        super().__init__(adapter)
        self.step = step

    def __call__(self, run_id: str, database_url: str, model_path: str, work_dir: Path, config: Any, **kw: Any) -> Any:
        from learner.rows import read_rows

        rows = read_rows(Path(work_dir) / "train.jsonl")
        self.calls.append({"run_id": run_id, "episode_ids": [r["episode_id"] for r in rows], **kw})
        checkpoint = Path(work_dir) / "checkpoints" / f"checkpoint-{self.step}"
        checkpoint.mkdir(parents=True)
        shutil.copyfile(self.adapter / "adapter_model.safetensors", checkpoint / "adapter_model.safetensors")
        (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": self.step}))
        seal_checkpoint(checkpoint, self.step)
        raise Killed


class Resumes(StandInTrainer):
    """Records the folder it was handed (its checkpoints), then returns a LoRA like a finished run."""

    def __call__(self, run_id: str, database_url: str, model_path: str, work_dir: Path, config: Any, **kw: Any) -> Any:
        checkpoints = sorted(p.name for p in (Path(work_dir) / "checkpoints").glob("checkpoint-*"))
        trained_already = (Path(work_dir) / "adapter").is_dir()
        if trained_already:  # as learner.train does for a finished folder: hand back its adapter
            from learner.train import TrainResult

            self.calls.append({"run_id": run_id, "work": Path(work_dir), "checkpoints": checkpoints, "reused": True})
            return TrainResult(adapter_dir=Path(work_dir) / "adapter", steps=1)
        result = super().__call__(run_id, database_url, model_path, work_dir, config, **kw)
        (Path(work_dir) / "result.json").write_text(json.dumps({"steps": 1}))  # learner.train writes it too
        self.calls[-1].update(work=Path(work_dir), checkpoints=checkpoints, reused=False)
        return result


def test_a_run_left_running_by_a_dead_learner_is_marked_and_continued_with_its_data_and_checkpoint(
    tmp_path: Path,
    database_url: str,
    session_factory: Factory,
    tiny_tool_model: ToolModel,
    tiny_adapter_dir: Path,
    serving: Any,
    evaluator: Any,
) -> None:
    config = make_config(tmp_path, database_url, tiny_tool_model.path)
    add_episodes(session_factory, tiny_tool_model, 6)
    dies = DiesAfterCheckpoint(tiny_adapter_dir, step=2)
    with pytest.raises(Killed):
        cycle(config, session_factory, serving, evaluator, dies)
    with session_factory() as s:
        (old,) = repos.list_training_runs(s)
    assert old.status == "running"  # on today's code it stays so forever
    with session_factory() as s, s.begin():
        repos.append_run_metrics(s, old.id, {"step": 1, "loss": 0.5})
        repos.append_run_metrics(s, old.id, {"step": 2, "loss": 0.4})
        repos.append_run_metrics(s, old.id, {"step": 3, "loss": 0.3})  # after the checkpoint: redone

    # New failures arrive meanwhile; the continued run must not see them (same data).
    add_episodes(session_factory, tiny_tool_model, 6)
    resumes = Resumes(tiny_adapter_dir)
    events: list[CycleEvent] = []
    result = cycle(config, session_factory, serving, evaluator, resumes, on_event=events.append)

    assert result.status == "promoted", result
    old_row, new_row = run_row(session_factory, old.id), run_row(session_factory, result.run_id)
    assert old_row.status == "interrupted" and "during training" in (old_row.error or "")
    assert old_row.finished_at is not None
    assert new_row.resumed_from == old.id and new_row.resumed_from_step == 2
    assert [m["step"] for m in new_row.metrics or []] == [1, 2]
    # The same rows, in the old run's folder (renamed to the new run's), with its checkpoint.
    assert sorted(resumes.calls[0]["episode_ids"]) == sorted(dies.calls[0]["episode_ids"])
    assert resumes.calls[0]["run_id"] == result.run_id
    assert resumes.calls[0]["work"] == Path(config.work_dir) / str(result.run_id)
    assert resumes.calls[0]["checkpoints"] == ["checkpoint-2"]
    assert not (Path(config.work_dir) / old.id).exists()
    stages = [e.stage for e in events]
    assert "interrupted" in stages and "resume" in stages and "skipped" not in stages
    assert any("resuming after step 2" in e.message for e in events)
    with session_factory() as s:
        assert repos.get_lease(s, "learner") is None
        consumed = {e for e in dies.calls[0]["episode_ids"]}
        assert all(repos.get_episode(s, e).consumed_by_run == result.run_id for e in consumed)

    # The next cycle has nothing to continue: it trains the new failures in a run of its own.
    third = cycle(config, session_factory, serving, evaluator, Resumes(tiny_adapter_dir))
    assert third.status == "promoted" and run_row(session_factory, third.run_id).resumed_from is None


def test_an_interrupted_run_trained_under_another_config_is_not_continued_and_the_cycle_says_why(
    tmp_path: Path,
    database_url: str,
    session_factory: Factory,
    tiny_tool_model: ToolModel,
    tiny_adapter_dir: Path,
    serving: Any,
    evaluator: Any,
) -> None:
    config = make_config(tmp_path, database_url, tiny_tool_model.path, train=TrainConfig(max_steps=4))
    add_episodes(session_factory, tiny_tool_model, 6)
    with pytest.raises(Killed):
        cycle(config, session_factory, serving, evaluator, DiesAfterCheckpoint(tiny_adapter_dir, step=2))
    changed = make_config(tmp_path, database_url, tiny_tool_model.path, train=TrainConfig(max_steps=8))
    events: list[CycleEvent] = []
    trainer = Resumes(tiny_adapter_dir)
    result = cycle(changed, session_factory, serving, evaluator, trainer, on_event=events.append)
    assert result.status == "promoted"
    assert run_row(session_factory, result.run_id).resumed_from is None
    assert trainer.calls[0]["checkpoints"] == []  # a fresh folder
    assert any("cannot be continued: its train differs" in e.message for e in events)
    with session_factory() as s:
        assert [r.status for r in repos.list_training_runs(s)] == ["promoted", "interrupted"]


def test_a_cycle_stopped_during_the_gate_marks_its_run_releases_the_lease_and_the_next_one_regates_it(
    tmp_path: Path,
    database_url: str,
    session_factory: Factory,
    tiny_tool_model: ToolModel,
    tiny_adapter_dir: Path,
    serving: Any,
    evaluator: Any,
) -> None:
    config = make_config(tmp_path, database_url, tiny_tool_model.path)
    add_episodes(session_factory, tiny_tool_model, 6)
    trainer = Resumes(tiny_adapter_dir)

    async def stopped_at_the_gate() -> str:
        run_ids: list[str] = []
        task: asyncio.Task[Any] | None = None

        def on_event(event: CycleEvent) -> None:
            if event.run_id:
                run_ids.append(event.run_id)
            if event.stage == "gate" and task is not None:
                task.cancel()  # what SIGTERM does to `rrr learn run` (and the scheduler's shutdown)

        task = asyncio.create_task(
            run_cycle(
                config,
                session_factory=session_factory,
                engines=EnginePool([serving]),
                eval_engine=evaluator,
                trainer=trainer,
                on_event=on_event,
            )
        )
        with pytest.raises(asyncio.CancelledError):
            await task
        return run_ids[0]

    run_id = asyncio.run(stopped_at_the_gate())
    run = run_row(session_factory, run_id)
    # On today's code: `succeeded`, no gate result, and the lease held until its TTL.
    assert run.status == "interrupted" and "during stage gate" in (run.error or "") and run.gate_result is None
    with session_factory() as s:
        assert repos.get_lease(s, "learner") is None

    events: list[CycleEvent] = []
    result = cycle(config, session_factory, serving, evaluator, trainer, on_event=events.append)
    assert result.status == "promoted" and result.gate is not None
    assert run_row(session_factory, result.run_id).resumed_from == run_id
    assert trainer.calls[-1]["reused"] is True  # trained already: only the gate and publish ran again
    assert any("from its trained adapter" in e.message for e in events)


@pytest.mark.slow
def test_rrr_learn_run_killed_then_stopped_mid_training_resumes_from_its_checkpoints_to_the_end(
    tmp_path: Path,
    database_url: str,
    session_factory: Factory,
    tiny_tool_model: ToolModel,
) -> None:
    """The real thing: `rrr learn run` with GRPO in its child, `kill -9` at checkpoint 2 of 6 (the
    child dies with it), a second `rrr learn run` continues from step 2 and gets SIGTERM at
    checkpoint 4 (run marked, lease released), a third finishes steps 5-6 and publishes. SQLite
    only: what differs by backend (marking, resuming, the lease) is tested on both above."""
    if not database_url.startswith("sqlite"):
        pytest.skip("the process-level path is the same on every backend; SQLite runs it")
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.support.upstream import Script, ScriptedUpstream, text

    add_episodes(session_factory, tiny_tool_model, 6)
    train = TrainConfig(
        max_steps=6,
        num_generations=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        max_completion_length=8,
        retry_max_tokens=24,
        learning_rate=1e-3,
        lora_r=8,
        lora_alpha=16,
        max_lora_rank=16,
        save_steps=2,
    )
    (tmp_path / "train.json").write_text(json.dumps(train.to_dict()))
    work = tmp_path / "work"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for name in ("RRR_ENGINE_URLS", "RRR_MODEL", "RRR_ADAPTERS_ROOT", "RRR_DATABASE_URL"):
        env.pop(name, None)

    def learn_run(up: ScriptedUpstream) -> subprocess.Popen[bytes]:
        args = [
            *("--database-url", database_url, "--engine-url", up.url, "--model", str(tiny_tool_model.path)),
            *("--work-dir", str(work), "--adapters-root", str(tmp_path / "adapters"), "--min-failures", "4"),
            *("--gate-margin", "-1", "--gate-tolerance", "1", "--gate-min-items", "1", "--max-client-share", "1"),
            *("--heldout-fraction", "0.5", "--max-lora-rank", "16", "--train-config", str(tmp_path / "train.json")),
        ]
        cmd = [sys.executable, "-m", "cli", "learn", "run", *args, "--json"]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def wait_for_checkpoint(proc: subprocess.Popen[bytes], step: int) -> Path:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            found = list(work.glob(f"*/checkpoints/checkpoint-{step}/COMPLETE"))
            if found:
                return found[0].parents[2]
            assert proc.poll() is None, (proc.stdout.read() if proc.stdout else b"").decode()[-3000:]
            time.sleep(0.1)
        raise AssertionError(f"no checkpoint {step} within 240 s")

    def gone(pid: int, within_s: float = 20) -> bool:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            try:
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
            except OSError:
                return True
            time.sleep(0.1)
        return False

    with ScriptedUpstream(Script(answer=[text("The weather is fine.")]), lora=True) as up:  # answers the probe
        first = learn_run(up)
        folder = wait_for_checkpoint(first, 2)
        child = int((folder / "train.pid").read_text())
        first.kill()
        first.wait()
        assert gone(child), "the training child outlived its killed learner"
        with session_factory() as s:
            (killed,) = repos.list_training_runs(s)
            assert killed.status == "running"

        second = learn_run(up)
        folder = wait_for_checkpoint(second, 4)
        child = int((folder / "train.pid").read_text())
        second.send_signal(signal.SIGTERM)
        out = second.communicate(timeout=60)[0].decode()
        assert second.returncode == 1 and "marked interrupted" in out, out[-3000:]
        assert gone(child)
        with session_factory() as s:
            stopped = repos.list_training_runs(s)[0]
            assert repos.get_lease(s, "learner") is None
        assert stopped.status == "interrupted" and "during stage train" in (stopped.error or "")
        assert stopped.resumed_from == killed.id and stopped.resumed_from_step == 2

        third = learn_run(up)
        out = third.communicate(timeout=300)[0].decode()
        assert third.returncode == 0, out[-3000:]
    final = json.loads(out.strip().splitlines()[-1])
    assert final["status"] == "promoted", final
    run = run_row(session_factory, final["run_id"])
    assert run.resumed_from == stopped.id and run.resumed_from_step == 4
    assert [m["step"] for m in run.metrics or []] == [1, 2, 3, 4, 5, 6]
    result = json.loads((work / run.id / "result.json").read_text())
    assert result["resumed_from_step"] == 4 and result["steps"] == 6
    with session_factory() as s:
        assert [r.status for r in repos.list_training_runs(s)] == ["promoted", "interrupted", "interrupted"]
