"""Benchmarks stay runnable: each bench script runs on a tiny setting and prints its JSON schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_objective_benchmark_prints_a_ratio() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "objective.py"), "--repeats", "2", "--hidden", "64", "--layers", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report["median_step_s"]) == {"mpo", "dpo_only"}
    assert report["ratio_mpo_over_dpo"] > 0
    medians = report["median_step_s"]
    # The ratio is computed from unrounded medians; the rounded ones printed beside it agree to ~1e-3.
    assert abs(report["ratio_mpo_over_dpo"] - medians["mpo"] / medians["dpo_only"]) < 1e-2
