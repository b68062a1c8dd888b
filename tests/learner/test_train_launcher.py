"""Multi-GPU training: the training child can be started by a launcher (`accelerate launch ...`) instead of python."""

from __future__ import annotations

import stat
import sys
from pathlib import Path

import pytest

from cli.learn import _learner_config
from learner.config import TrainConfig
from learner.launch import launch_training
from learner.train import TrainingFailed


def test_the_launcher_replaces_python_in_front_of_the_training_module(tmp_path: Path) -> None:
    seen = tmp_path / "argv.txt"
    launcher = tmp_path / "fake-accelerate"
    launcher.write_text(
        f"#!{sys.executable}\nimport sys\nopen({str(seen)!r}, 'w').write('\\n'.join(sys.argv[1:]))\nsys.exit(3)\n"
    )
    launcher.chmod(launcher.stat().st_mode | stat.S_IXUSR)
    work = tmp_path / "work"
    work.mkdir()
    (work / "train.jsonl").write_text("")
    with pytest.raises(TrainingFailed):
        launch_training(
            "run-7",
            "sqlite://",
            "/models/base",
            work,
            TrainConfig(),
            launcher=[str(launcher), "launch", "--num_processes", "2"],
            poll_s=0.05,
        )
    argv = seen.read_text().splitlines()
    assert argv[:5] == ["launch", "--num_processes", "2", "-m", "learner.train"]
    assert argv[5:9] == ["--run-id", "run-7", "--model", "/models/base"]
    assert argv[argv.index("--work-dir") + 1] == str(work)


def test_the_cli_option_is_split_like_a_shell_command(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'db'}"
    launcher = "accelerate launch --num_processes 4 --mixed_precision 'bf16'"
    config, _ = _learner_config(
        {"database_url": db, "adapters_root": str(tmp_path), "model": "/models/base", "train_launcher": launcher}
    )
    assert config.train_launcher == ("accelerate", "launch", "--num_processes", "4", "--mixed_precision", "bf16")
    default, _ = _learner_config({"database_url": db, "adapters_root": str(tmp_path), "model": "/models/base"})
    assert default.train_launcher == ()
