"""The benchmarks still run: a tiny run of each prints its table (numbers are not judged here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_proxy_overhead_benchmark_drives_both_paths_without_errors() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "proxy_overhead.py"),
         "--requests", "30", "--seconds", "1", "--json"],
        capture_output=True, text=True, timeout=240, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "via rrr" in result.stdout and "added" in result.stdout
    runs = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(runs) == 2
    for run in runs.values():
        for side in ("direct", "rrr"):
            assert run[side]["errors"] == 0 and run[side]["n"] > 0
        assert run["rps_ratio"] > 0


@pytest.mark.slow
def test_learning_benchmark_trains_and_measures_every_seed(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from demo.base_policy import build_policy
    from demo.sft import SFTConfig
    from learner.tiny import TinyModelConfig

    policy = tmp_path / "policy"
    tiny = TinyModelConfig(
        hidden_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=128, vocab_size=600, max_position_embeddings=1024,
    )  # fmt: skip
    recipe = SFTConfig(
        seed=3, n_train_items=120, steps=3, batch_size=8, group_size=4, toolless_steps=1, warmup_steps=1,
        eval_items=4, eval_every=0, tokenizer_texts=120, model=tiny,
    )  # fmt: skip
    build_policy(policy, recipe, num_threads=1, progress=False)
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "learning.py"), "--policy", str(policy),
         "--seeds", "0", "1", "--traffic", "12", "--heldout", "6", "--steps", "1", "--threads", "1", "--json"],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("seed ")] == ["seed 0", "seed 1"]
    assert "after-retry difference over 2 seeds" in result.stdout
    found = json.loads(lines[-1])
    assert found["failures"] == 12  # a policy this small fails every traffic task: all are training rows
    assert [run["seed"] for run in found["runs"]] == [0, 1]
    for run in found["runs"]:
        assert run["first_attempt"]["n"] == 6
        comparison = run["comparison"]
        assert set(comparison) >= {"first_attempt", "after_retry", "rescue_among_base_failures"}
        assert comparison["rescue_among_base_failures"]["n"] == 6 - found["base"]["first_attempt"]["successes"]
