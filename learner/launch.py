"""Starting a training run in a child process and waiting for it: the parent side of `learner.train`.

Who calls it: the learner cycle (`launch_training`, via `learner.cycle.run_cycle`) and the demo.
The child is `python -m learner.train` (or the configured launcher, e.g. `accelerate launch`),
which stores per-step metrics and heartbeats on the run, checkpoints crash-safely and publishes
`work_dir/adapter`; this side writes the config, starts it, relays each finished step to a
callback, enforces a timeout, and turns an exit without an adapter into `TrainingFailed` with the
child's last error line. No torch here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from adapters.folder import write_atomic
from learner.checkpoints import read_metrics
from learner.config import TrainConfig
from learner.train import ADAPTER, DATABASE_URL_ENV, ERROR_PREFIX, TrainingFailed, TrainResult, read_result


def launch_training(
    run_id: str,
    database_url: str,
    model_path: str,
    work_dir: Path,
    config: TrainConfig,
    *,
    on_step: Callable[[dict[str, Any]], None] | None = None,
    timeout_s: float | None = None,
    heartbeat_s: float = 30.0,
    poll_s: float = 0.5,
    env: dict[str, str] | None = None,
    launcher: Sequence[str] | None = None,
    init_adapter: str | None = None,
) -> TrainResult:
    """Run training for `run_id` in a child process (`python -m learner.train`) and wait for it.

    The caller has written the rows with `learner.rows.write_rows(work_dir / "train.jsonl", rows)`.
    The child stores per-step metrics and heartbeats on the training run, resumes from the newest
    complete checkpoint in `work_dir`, and publishes `work_dir/adapter`. `on_step` here sees each
    step as the child finishes it (for a progress bar; the stored metrics are authoritative).
    `env` adds environment variables for the child (e.g. `CUDA_VISIBLE_DEVICES`, or
    `OMP_NUM_THREADS=1`, which trains tiny CPU models several times faster on a busy machine).
    `launcher` replaces `python` in front of `-m learner.train ...`: `["accelerate", "launch",
    "--num_processes", "4"]` trains on four GPUs (default: one process, this interpreter).
    `init_adapter` (a published, verified adapter folder) warm-starts the run from that adapter.
    Raises TrainingFailed with the child's last error line when it fails, is killed or times out.
    """
    work = Path(work_dir)
    if not (work / "train.jsonl").is_file():
        raise FileNotFoundError(f"no training rows: write them first with write_rows({work / 'train.jsonl'}, rows)")
    write_atomic(work / "config.json", json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
    child_env = {**os.environ, **(env or {})}
    child_env[DATABASE_URL_ENV] = database_url
    child_env["PYTHONUNBUFFERED"] = "1"
    root = str(Path(__file__).resolve().parents[1])
    child_env["PYTHONPATH"] = root + (os.pathsep + child_env["PYTHONPATH"] if child_env.get("PYTHONPATH") else "")
    cmd = [
        *(launcher or [sys.executable]),
        "-m",
        "learner.train",
        "--run-id",
        run_id,
        "--model",
        str(model_path),
        "--work-dir",
        str(work),
        "--heartbeat-s",
        str(heartbeat_s),
        *(["--init-adapter", str(init_adapter)] if init_adapter else []),
    ]
    log_path = work / "train.log"
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    reported = 0
    with log_path.open("ab") as log_file:
        proc = subprocess.Popen(
            cmd, stdout=log_file, stderr=subprocess.STDOUT, env=child_env, preexec_fn=_die_with_parent(os.getpid())
        )
        write_atomic(work / "train.pid", f"{proc.pid}\n")
        try:
            while True:
                try:
                    proc.wait(timeout=poll_s)
                    done = True
                except subprocess.TimeoutExpired:
                    done = False
                reported = _report_new_steps(work / "metrics.jsonl", reported, on_step)
                if done:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    proc.kill()
                    proc.wait()
                    raise TrainingFailed(f"training timed out after {timeout_s:g}s (checkpoints in {work} are kept)")
        except BaseException:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            raise
    if proc.returncode != 0 or not (work / ADAPTER).is_dir():
        raise TrainingFailed(_failure_reason(proc.returncode, log_path))
    return read_result(work / "result.json", work / ADAPTER)


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A `preexec_fn` for the training child: on Linux it gets SIGTERM when this process dies, even
    by SIGKILL, so no orphan keeps training (and holding the GPU) after its learner is gone. (Linux
    sends it when the thread that started the child ends; that thread waits for the child.)"""
    if not sys.platform.startswith("linux"):
        return None

    def arm() -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return arm


def stop_training(work_dir: Path, *, grace_s: float = 10.0) -> bool:
    """Stop the training child this process started in `work_dir` (its pid is in `train.pid`):
    SIGTERM, then SIGKILL after `grace_s`. Its complete checkpoints stay for a resume. Only a child
    of this process is signalled (checked in /proc). True if one was running."""
    try:
        pid = int((Path(work_dir) / "train.pid").read_text().strip())
        stat = Path(f"/proc/{pid}/stat").read_text()
        parent = int(stat.rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return False  # gone already, or not a Linux /proc: nothing we can safely check
    if parent != os.getpid():
        return False
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and _running(pid):
            time.sleep(0.05)
        if _running(pid):
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:  # reaped by the thread that waits for it
        pass
    return True


def _running(pid: int) -> bool:
    """Alive and not a zombie (the thread in `launch_training` reaps it; we must not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _report_new_steps(path: Path, reported: int, on_step: Callable[[dict[str, Any]], None] | None) -> int:
    if on_step is None:
        return reported
    for item in read_metrics(path):
        step = int(item.get("step", 0))
        if step > reported:
            on_step(item)
            reported = step
    return reported


def _failure_reason(returncode: int, log_path: Path) -> str:
    lines = [line.strip() for line in _tail(log_path).splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith(ERROR_PREFIX):
            return line[len(ERROR_PREFIX) :]
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"the training process was killed by {name}"
    if returncode == 0:
        return "the training process exited without writing an adapter"
    return lines[-1] if lines else f"the training process exited with status {returncode}"


def _tail(path: Path, size: int = 16384) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - size))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
