"""learner/settings.py: RRR_* variables and the RRR_CONFIG file become a LearnerConfig; unset settings keep
the config dataclasses' defaults (the one place they live); flags given to `rrr learn` win."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from learner.config import GateConfig, LearnerConfig
from learner.settings import LearnerSettings


def test_unset_settings_keep_the_defaults_of_the_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("RRR_LEARN_MIN_FAILURES", "RRR_GATE_MARGIN", "RRR_DATABASE_URL", "RRR_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    config = LearnerSettings(model="m", data_dir=tmp_path).learner_config()
    defaults = LearnerConfig(adapters_root="a", model_path="m", engine_urls=[], database_url="d", work_dir="w")
    assert (config.min_new_failures, config.dataset_limit, config.drain_s) == (
        defaults.min_new_failures,
        defaults.dataset_limit,
        defaults.drain_s,
    )
    assert config.gate == GateConfig()
    assert config.adapters_root == str(tmp_path / "adapters") and config.work_dir == str(tmp_path / "learner")
    assert config.database_url == f"sqlite:///{tmp_path / 'rrr.db'}"


def test_environment_then_keywords(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RRR_LEARN_MIN_FAILURES", "7")
    monkeypatch.setenv("RRR_GATE_MARGIN", "0.05")
    monkeypatch.setenv("RRR_ENGINE_URLS", "http://a:1, http://b:2")
    monkeypatch.setenv("RRR_TRAIN_LAUNCHER", "accelerate launch --num_processes 2")
    config = LearnerSettings(model="m", data_dir=tmp_path, gate_min_items=5).learner_config()
    assert config.min_new_failures == 7 and config.engine_urls == ["http://a:1", "http://b:2"]
    assert (config.gate.margin, config.gate.min_items) == (0.05, 5)
    assert config.train_launcher == ("accelerate", "launch", "--num_processes", "2")
    assert LearnerSettings(model="m", data_dir=tmp_path, learn_min_failures=2).learner_config().min_new_failures == 2


def test_yaml_file_and_training_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    train = tmp_path / "train.json"
    train.write_text(json.dumps({"max_steps": 3, "lora_r": 32, "max_lora_rank": 8}))
    yaml = tmp_path / "rrr.yaml"
    yaml.write_text(f"model: base\nmax_lora_rank: 32\ntrain_config: {train}\nheldout_fraction: 0.3\n")
    monkeypatch.setenv("RRR_CONFIG", str(yaml))
    config = LearnerSettings(data_dir=tmp_path).learner_config()
    assert config.model_path == "base" and config.heldout_fraction == 0.3
    assert config.train is not None and (config.train.max_steps, config.train.max_lora_rank) == (3, 32)


def test_invalid_values_name_what_to_change(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no base model"):
        LearnerSettings(data_dir=tmp_path).learner_config()
    with pytest.raises(ValueError, match="min_new_failures"):
        LearnerSettings(model="m", data_dir=tmp_path, learn_min_failures=0).learner_config()
    with pytest.raises(ValueError, match="gate margin"):
        LearnerSettings(model="m", data_dir=tmp_path, gate_margin=3).learner_config()
    (tmp_path / "t.json").write_text("[1]")
    with pytest.raises(ValueError, match="JSON object"):
        LearnerSettings(model="m", data_dir=tmp_path, train_config=tmp_path / "t.json").learner_config()
