"""`mpo demo` end to end, at a fraction of its size: prompts, tiny model, warm start, one online round on
the real services, the closing summary; then the prepared parts are reused instead of rebuilt. Both
recipes: arith (text model, vLLM rollout) and shapes (image-text model, transformers rollout)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mpo.demo import RECIPES, prepare
from mpo.services.controller.store import RunStore
from mpo.v1 import controller_pb2

pytestmark = pytest.mark.slow


def test_demo_runs_from_nothing_and_reuses_what_it_built(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "mpo.cli", "demo", "--workdir", str(workdir), "--rounds", "1",
         "--train-prompts", "120", "--heldout-prompts", "40", "--bootstrap-steps", "150"],
        capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "[1/3] arith prompts: 120 train, 40 held out" in out and "[3/3] warm start of the base policy" in out
    assert "round   1 | pairs" in out
    assert re.search(r"dashboard \(live while the rounds run\): http://127\.0\.0\.1:\d+/#/runs/demo-seed0", out)
    assert f"dashboard: mpo dashboard --store-dir {workdir / 'store'}" in out
    summary = next(line for line in out.splitlines() if line.startswith("held-out arith: base"))
    store = RunStore(workdir / "store")
    run = store.get_run("demo-seed0")
    assert run is not None and run.state == controller_pb2.RUN_STATE_COMPLETED
    final = store.round_records("demo-seed0")[-1].eval_accuracy["arith"]
    assert f"base {run.base_eval_accuracy['arith']:.1%} -> round 1 {final:.1%}" in summary
    assert (workdir / "store" / "runs" / "demo-seed0" / "pairs" / "round-000001.parquet").exists()
    assert any((workdir / "store" / "runs" / "demo-seed0" / "tensorboard").iterdir())
    config = yaml.safe_load((workdir / "demo-seed0.yaml").read_text())
    assert config["rounds"]["eval_prompts"] == 40 and config["model"] == str(workdir / "base")
    assert config["rounds"]["prompts_per_round"] == 120, "a prompt set smaller than the recipe's round caps it"

    said: list[str] = []
    prepare(workdir, train_prompts=120, heldout_prompts=40, bootstrap_steps=150, say=said.append)
    assert [line.split(" ")[1] for line in said] == ["reusing"] * 3


def test_demo_refuses_a_bad_warm_start_length_before_building_anything(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "mpo.cli", "demo", "--workdir", str(workdir), "--bootstrap-steps", "0"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--bootstrap-steps" in result.stderr and "steps: Input should be greater than or equal to 1" in result.stderr
    assert "Traceback" not in result.stderr and not any(workdir.iterdir())


def test_shapes_demo_runs_on_images_and_refuses_another_tasks_workdir(tmp_path: Path) -> None:
    workdir = tmp_path / "demo-shapes"
    result = subprocess.run(
        [sys.executable, "-m", "mpo.cli", "demo", "--task", "shapes", "--workdir", str(workdir), "--rounds", "1",
         "--train-prompts", "16", "--heldout-prompts", "8", "--bootstrap-steps", "10"],
        capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "[1/3] shapes prompts: 16 train, 8 held out" in out and "[2/3] building the tiny image-text model" in out
    assert "round   1 | pairs" in out
    config = yaml.safe_load((workdir / "demo-shapes-seed0.yaml").read_text())
    assert config["rollout"]["backend"] == "transformers" and config["rounds"]["prompts_per_round"] == 16
    assert config["rounds"]["eval_prompts"] == 8 and config["rounds"]["eval_every"] == 1
    assert json.loads((workdir / "tiny-model" / "config.json").read_text())["model_type"] == "llava"
    store = RunStore(workdir / "store")
    run = store.get_run("demo-shapes-seed0")
    assert run is not None and run.state == controller_pb2.RUN_STATE_COMPLETED
    final = store.round_records("demo-shapes-seed0")[-1]
    summary = next(line for line in out.splitlines() if line.startswith("held-out shapes: base"))
    assert f"base {run.base_eval_accuracy['shapes']:.1%} -> round 1 {final.eval_accuracy['shapes']:.1%}" in summary
    assert final.labels.prompts == 16 and final.labels.samples == 16 * 8

    # The arith recipe must not reuse the shapes prompts, model and base: refused before anything changes.
    before = sorted(path.relative_to(workdir) for path in workdir.rglob("*"))
    refused = subprocess.run(
        [sys.executable, "-m", "mpo.cli", "demo", "--task", "arith", "--workdir", str(workdir), "--rounds", "1"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert f"--workdir: {workdir} holds a demo of task shapes, not arith" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert sorted(path.relative_to(workdir) for path in workdir.rglob("*")) == before
    said: list[str] = []
    prepare(workdir, recipe=RECIPES["shapes"], train_prompts=16, heldout_prompts=8, bootstrap_steps=10, say=said.append)
    assert [line.split(" ")[1] for line in said] == ["reusing"] * 3
