"""The bootstrap (SFT warm start) end to end on a reduced budget, through the real CLI and the API.

The accuracy target is measured by bench/bootstrap_accuracy.py, not asserted here.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from mpo.config import BootstrapConfig
from mpo.data.records import PromptRecord
from mpo.data.tasks import TASKS, bootstrap_ema_decay, make_splits
from mpo.evaluation import is_correct
from mpo.models.generate import Sampling, TransformersGenerator
from mpo.models.loading import load_model, vision_tower
from mpo.models.tiny import TextModelSpec, VisionSpec, build_image_text_model
from mpo.trainer.sft import bootstrap

MPO = [sys.executable, "-m", "mpo.cli"]
TINY = ["--hidden-size", "64", "--layers", "2", "--heads", "2", "--corpus-per-task", "200"]


def mpo(*args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*MPO, *args], capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_cli_pipeline_builds_bootstraps_and_evaluates_a_text_policy(tmp_path: Path) -> None:
    data, model, base = tmp_path / "arith", tmp_path / "model", tmp_path / "base"
    mpo("data", "make", "--task", "arith", "--out", str(data), "--train", "300", "--heldout", "40")
    assert len((data / "train.jsonl").read_text().splitlines()) == 300
    mpo("models", "build", "--kind", "text", "--tasks", "arith", "--out", str(model), *TINY)
    result = mpo(
        "bootstrap", "--model", str(model), "--data", str(data), "--out", str(base),
        "--steps", "8", "--batch-size", "8", "--eval-every", "4", "--eval-prompts", "8",
        "--stability-steps", "2", "--pass-k", "2", "--learning-rate", "0.003", "--max-new-tokens", "16",
    )  # fmt: skip
    report = json.loads(result.stdout[result.stdout.index("{") :])
    assert [point["step"] for point in report["curve"]] == [4, 8]
    assert report["final"]["prompts"] == 8 and report["pass_at_k"]["samples_per_prompt"] == 2
    assert report["stability_delta_points"] is not None
    assert (base / "model.safetensors").exists() and (base / "tokenizer.json").exists()

    evaluation = json.loads(
        mpo("eval", "--model", str(base), "--data", str(data / "heldout.jsonl"), "--limit", "6").stdout
    )
    assert evaluation["prompts"] == 6 and 0.0 <= evaluation["accuracy"] <= 1.0


@pytest.mark.parametrize(("option", "value"), [("steps", "0"), ("vision-lr-ratio", "1.5")])
def test_cli_refuses_a_bad_option_naming_it_and_writes_nothing(tmp_path: Path, option: str, value: str) -> None:
    out = tmp_path / "base"
    command = ["bootstrap", "--model", str(tmp_path), "--data", str(tmp_path), "--out", str(out), f"--{option}", value]
    result = subprocess.run([*MPO, *command], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert "invalid bootstrap options" in result.stderr and option.replace("-", "_") in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


def shapes_model(tmp_path: Path, train: int) -> tuple[dict[str, list[PromptRecord]], Path]:
    """shapes prompts and a tiny image-text model whose tokenizer was trained on them."""
    splits = make_splits("shapes", seed=0, train=train, heldout=8, out_dir=tmp_path / "shapes")
    task = TASKS["shapes"]
    corpus = [r.question for r in splits["train"]] + [task.demonstration(r, random.Random(0)) for r in splits["train"]]
    spec = TextModelSpec(
        vocab_size=400, hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=128
    )
    return splits, build_image_text_model(tmp_path / "vl", corpus, spec, VisionSpec(num_layers=1), seed=0)


def test_bootstrap_api_trains_an_image_text_policy(tmp_path: Path) -> None:
    splits, model_dir = shapes_model(tmp_path, train=60)
    task = TASKS["shapes"]
    config = BootstrapConfig(
        steps=6, batch_size=4, eval_every=3, eval_prompts=4, stability_steps=0, pass_k=2, max_new_tokens=24
    )
    report = bootstrap(
        model_dir, tmp_path / "base", splits["train"], splits["heldout"], task.demonstration, config, progress=False
    )
    assert len(report.losses) == 6
    assert report.losses[-1] < report.losses[0], "six steps on demonstrations must lower the SFT loss"
    assert report.after_stability is None and report.final is not None

    generator = TransformersGenerator(tmp_path / "base")
    responses = generator.generate(splits["heldout"][:2], Sampling(n=2, temperature=1.0, seed=0, max_new_tokens=8))
    assert [len(r) for r in responses] == [2, 2]


def test_vision_lr_ratio_slows_or_freezes_the_image_encoder_only(tmp_path: Path) -> None:
    """The tower moves at about the ratio's share of the full rate's distance, not at all at 0, while the
    language model trains at the full rate either way."""
    splits, model_dir = shapes_model(tmp_path, train=40)
    task = TASKS["shapes"]

    def distances(ratio: float) -> tuple[float, float]:
        """How far (L1) the saved tower and the rest moved from the initial weights."""
        config = BootstrapConfig(
            steps=4, batch_size=4, eval_every=100, eval_prompts=2, stability_steps=0, pass_k=1,
            max_new_tokens=4, learning_rate=1e-2, warmup_steps=0, ema_decay=0.0, vision_lr_ratio=ratio,
        )  # fmt: skip
        out = tmp_path / f"base-{ratio}"
        bootstrap(model_dir, out, splits["train"], splits["heldout"], task.demonstration, config, progress=False)
        before, after = load_model(model_dir), load_model(out)
        in_tower = {id(weight) for weight in vision_tower(before).parameters()}
        moved = {"tower": 0.0, "rest": 0.0}
        trained = dict(after.named_parameters())
        for name, weight in before.named_parameters():
            moved["tower" if id(weight) in in_tower else "rest"] += (trained[name] - weight).abs().sum().item()
        return moved["tower"], moved["rest"]

    full_tower, full_rest = distances(1.0)
    slow_tower, slow_rest = distances(0.1)
    frozen_tower, frozen_rest = distances(0.0)
    assert full_tower > 0 and frozen_tower == 0.0
    assert slow_tower < 0.3 * full_tower  # Adam's steps scale with the rate
    assert min(slow_rest, frozen_rest) > 0.5 * full_rest  # the language model still trains at the peak rate


def test_saved_base_is_the_weight_average(tmp_path: Path) -> None:
    """With a slow average the saved weights stay near the start; without one they are the last iterate."""
    from safetensors.torch import load_file

    from mpo.models.tiny import build_text_model

    splits = make_splits("arith", seed=0, train=40, heldout=4, out_dir=tmp_path / "arith")
    corpus = [TASKS["arith"].demonstration(r, random.Random(0)) or r.question for r in splits["train"]]
    spec = TextModelSpec(
        vocab_size=300, hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=64
    )
    model_dir = build_text_model(tmp_path / "m", corpus, spec, seed=0)
    start = load_file(model_dir / "model.safetensors")

    def moved(ema_decay: float) -> float:
        config = BootstrapConfig(
            steps=5, batch_size=4, eval_every=100, eval_prompts=2, stability_steps=0, pass_k=1,
            max_new_tokens=4, learning_rate=1e-2, ema_decay=ema_decay,
        )  # fmt: skip
        out = tmp_path / f"base-{ema_decay}"
        bootstrap(
            model_dir, out, splits["train"], splits["heldout"], TASKS["arith"].demonstration, config, progress=False
        )
        saved = load_file(out / "model.safetensors")
        return sum((saved[k] - start[k]).abs().sum().item() for k in start)

    last_iterate, averaged = moved(0.0), moved(0.999)
    assert last_iterate > 0 and averaged < 0.05 * last_iterate


def test_is_correct_uses_the_final_answer_line() -> None:
    record = TASKS["arith"].generate(1, 0, None)[0]
    demonstration = TASKS["arith"].demonstration(record, random.Random(0))
    assert is_correct(demonstration, record)
    assert not is_correct(demonstration.replace("Final answer:", "Answer:"), record)
    assert not is_correct(f"Final answer: {record.answer}", record), "a bare answer has no rationale"


def test_each_built_in_task_picks_its_measured_weight_average() -> None:
    """Unset `ema_decay` follows the task: shapes averages (0.98), arith and user data do not."""
    arith = TASKS["arith"].generate(2, 0, None)
    shapes_like = [r.model_copy(update={"task": "shapes"}) for r in arith]
    user = [r.model_copy(update={"task": "my-task"}) for r in arith]
    assert bootstrap_ema_decay(arith) == 0.0
    assert bootstrap_ema_decay(shapes_like) == 0.98
    assert bootstrap_ema_decay(arith + shapes_like) == 0.98
    assert bootstrap_ema_decay(user) == 0.0
