"""The benchmarks still run: a tiny run of each prints its table (numbers are not judged here)."""

from __future__ import annotations

import json
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
