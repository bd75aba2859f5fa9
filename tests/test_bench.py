"""Benchmarks stay runnable: each bench script runs on a tiny setting and prints its JSON schema."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from mpo.data.loader import write_prompts_jsonl
from mpo.data.records import PromptRecord
from mpo.data.tasks import make_splits
from mpo.demo import RECIPES, demo_run_config
from mpo.evaluation import EvalResult
from mpo.models.corpus import task_corpus
from mpo.models.families import FAMILIES
from mpo.models.tiny import build_image_text_model, build_text_model
from mpo.overrides import OverrideError
from mpo.plugins import load_verifier
from mpo.services.controller.store import RunStore
from mpo.v1 import common_pb2, controller_pb2
from mpo.weights import DEFAULT_BUCKET_BYTES

ROOT = Path(__file__).resolve().parents[1]


def report(stdout: str) -> dict:
    """The JSON report, which comes last: engines (vLLM, DeepSpeed) log to stdout before it."""
    return json.loads(stdout[stdout.rindex('{\n  "benchmark"') :])


def run_bench(script: str, arguments: str, timeout: int = 300) -> dict:
    """Run `bench/<script>` with its space-separated `arguments`; its JSON report (the run must succeed)."""
    command = [sys.executable, str(ROOT / "bench" / script), *arguments.split()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return report(result.stdout)


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


def test_objective_benchmark_runs_a_family_model_on_a_real_image_batch() -> None:
    result_ = run_bench("objective.py", "--family qwen2-vl --repeats 1 --pairs 2")
    assert result_["family"] == "qwen2-vl" and result_["ratio_mpo_over_dpo"] > 0
    assert set(result_["median_step_s"]) == {"mpo", "dpo_only"}
    assert result_["model"]["parameters"] > 0 and result_["batch"]["pairs"] == 2
    # The trainer's batch, images included: every processor output reached the forward.
    expected = {"input_ids", "attention_mask", "labels", *FAMILIES["qwen2-vl"].processor_keys}
    assert set(result_["batch"]["inputs"]) == expected


def test_transformers_decoding_benchmark_compares_the_two_caches_on_the_same_samples() -> None:
    result = run_bench("transformers_decoding.py", "--prompts 3 --n 2 --max-tokens 6 --repeats 2")
    assert result["seconds"]["dynamic"] and len(result["seconds"]["static"]) == 2
    rates = result["tokens_per_s"]
    assert result["ratio_static_over_dynamic"] == pytest.approx(rates["static"] / rates["dynamic"], rel=1e-2)
    assert result["same_tokens"] is True and result["workload"]["tokens"] > 0


@pytest.mark.slow
def test_rollout_benchmark_prints_its_ratios() -> None:
    tiny = run_bench(
        "rollout.py",
        "--sizes tiny --prompts 4 --n 2 --max-tokens 8 --kv-cache-mib 16 --enforce-eager",
        timeout=900,
    )["sizes"]["tiny"]
    assert tiny["ratio_grpc_over_in_process"] > 0 and tiny["tokens_per_s"]["grpc"] > 0
    update = tiny["weight_update"]
    assert update["streamed"]["seconds"] > 0 and update["storage"]["seconds"] > 0
    for transport in ("streamed", "storage"):  # the service's own install time is part of the call's
        assert 0 < update[transport]["install_seconds"] <= update[transport]["seconds"]
    assert update["ratio_storage_over_memcpy"] > 0 and tiny["update_bytes"] > tiny["parameters"]
    assert update["bucket_bytes"] == DEFAULT_BUCKET_BYTES and update["blobs"] >= 1


@pytest.mark.slow
def test_reward_benchmark_prints_its_ratio() -> None:
    arguments = "--prompts 20 --n 4 --max-tokens 8 --workers 2 --enforce-eager"
    result_ = run_bench("reward.py", arguments, timeout=900)["result"]
    assert result_["samples"] == 80 and result_["pairs"] > 0
    assert 0.2 < result_["sample_accuracy"] < 0.8, "about half the demonstration answers are corrupted"
    assert result_["ratio_rollout_over_labelling_time"] > 0 and result_["pairs_per_second"] > 0


@pytest.mark.slow
def test_trainer_benchmark_prints_its_ratios() -> None:
    result_ = run_bench("trainer.py", "--pairs 8 --micro 2 --steps 1 --repeats 1 --once", timeout=900)["result"]
    assert result_["ratio_mpo_over_dpo"] > 0 and result_["tokens_per_s"] > 0
    assert result_["speedup_packed_over_padded"] > 0 and result_["step_s"]["mpo_padded"] > 0
    two, one = result_["memory_per_rank_bytes"]["2_ranks"], result_["memory_per_rank_bytes"]["1_rank"]
    assert one["parameters"] == 4 * result_["parameters"], "fp32: 4 bytes per parameter on one rank"
    assert two["parameters"] < one["parameters"] and two["optimizer_state"] < one["optimizer_state"]


def test_warm_start_speed_benchmark_compares_packed_with_padded_steps() -> None:
    result_ = run_bench("warm_start_speed.py", "--steps 2 --warmup 1")
    padded, packed = result_["arms"]["padded"], result_["arms"]["packed"]
    assert packed["positions_per_step"] < padded["positions_per_step"]
    assert result_["speedup_packed_over_padded"] > 0 and packed["seconds_per_step"] > 0


def _bench_module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_online_benchmark_probes_a_recipe_change_under_its_own_run_id(tmp_path: Path) -> None:
    online = _bench_module("online")
    overrides = online.parse_overrides(
        ["rounds.prompts_per_round=192", "rounds.max_pairs_per_prompt=3", "objective.terms={preference: 1.0}"]
    )
    assert overrides["rounds.prompts_per_round"] == 192 and overrides["objective.terms"] == {"preference": 1.0}
    recipe = online.variant_config(tmp_path, "mpo", 0, 40)
    probe = online.variant_config(tmp_path, "mpo", 0, 40, overrides)
    assert (probe.rounds.prompts_per_round, probe.rounds.max_pairs_per_prompt) == (192, 3)
    assert probe.objective.terms == {"preference": 1.0}
    demo = demo_run_config(tmp_path, seed=0, rounds=40, mode="sync")
    assert recipe.rounds.prompts_per_round == demo["rounds"]["prompts_per_round"] and recipe.run_id == "bench-mpo-seed0"
    # The MPO variant runs the demo's objective (trainer included); the ablations keep one part of it.
    assert recipe.objective.terms == demo["objective"]["terms"] == recipe.trainer.objective.terms
    assert online.variant_config(tmp_path, "dpo", 0, 40).trainer.objective.terms == {"preference": 1.0}
    # A probe never reads back (or resumes) the stored run of another config, and finds its own again.
    again = online.variant_config(tmp_path, "mpo", 0, 40, overrides)
    assert probe.run_id != recipe.run_id and probe.run_id == again.run_id
    assert probe.trainer.checkpoint_dir != recipe.trainer.checkpoint_dir
    with pytest.raises(OverrideError, match="expected KEY=VALUE"):
        online.parse_overrides(["rounds.prompts_per_round"])
    with pytest.raises(ValueError, match="prompt_per_round"):  # a misspelt key is refused by the config
        online.variant_config(tmp_path, "mpo", 0, 40, {"rounds.prompt_per_round": 256})
    # The shapes recipe: its image-text rollout and its own objective, with an ablation's terms swapped in.
    shapes = online.variant_config(tmp_path, "dpo", 0, 20, recipe=RECIPES["shapes"])
    assert shapes.rollout.backend == "transformers" and shapes.trainer.objective.terms == {"preference": 1.0}
    shapes_demo = demo_run_config(tmp_path, seed=0, rounds=20, mode="sync", recipe=RECIPES["shapes"])
    assert shapes.rounds.prompts_per_round == shapes_demo["rounds"]["prompts_per_round"]


def test_online_benchmark_ablations_change_only_their_part_of_the_recipe(tmp_path: Path) -> None:
    """MPO against its parts and against offline MPO: each variant differs from the recipe in one place."""
    online = _bench_module("online")
    for recipe in RECIPES.values():
        mpo = online.variant_config(tmp_path, "mpo", 1, 20, recipe=recipe)
        terms = dict(mpo.objective.terms)
        expected = {
            "sft": {"generation": 1.0},
            "dpo": {"preference": 1.0},
            "bco": {"quality": 1.0},
            "dpo+sft": {"preference": terms["preference"], "generation": terms["generation"]},
            "offline": terms,
        }
        for variant, variant_terms in expected.items():
            config = online.variant_config(tmp_path, variant, 1, 20, recipe=recipe)
            assert config.trainer.objective.terms == config.objective.terms == variant_terms, variant
            assert config.rounds.sample_from == ("base" if variant == "offline" else "policy"), variant
            assert config.rounds.model_copy(update={"sample_from": "policy"}) == mpo.rounds, variant
            assert config.trainer.learning_rate == mpo.trainer.learning_rate
            assert config.run_id not in {mpo.run_id, None} and config.run_id.endswith("-seed1")
        assert online.variant_config(tmp_path, "dpo+sft", 1, 20, recipe=recipe).run_id.endswith("bench-dpo-sft-seed1")


def test_offline_runs_are_also_compared_at_the_step_the_online_run_ended_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline rounds make more pairs (the base is right on some samples of more prompts): the bench also
    scores the offline checkpoint kept at, or just before, the online run's last optimizer step."""
    online = _bench_module("online")
    offline = online.variant_config(tmp_path, "offline", 0, 3)
    assert offline.trainer.keep_checkpoints == 4, "every round's checkpoint is kept"
    mpo = online.variant_config(tmp_path, "mpo", 0, 3)
    store = RunStore(offline.store_dir)
    assert online.at_online_steps(tmp_path, offline, 0, 3, {}, RECIPES["arith"]) is None, "no online run yet"
    store.put_run(controller_pb2.Run(run_id=mpo.run_id))
    for round_index, steps in enumerate((2, 3, 2), start=1):
        store.commit_pairs(mpo.run_id, round_index, [])
        store.store_round(common_pb2.RoundMetrics(run_id=mpo.run_id, round=round_index, train_steps=steps))
    for step in (3, 6, 8, 10):  # the offline run's checkpoints: 3-4 steps a round
        (offline.trainer.checkpoint_dir / f"step-{step:09d}").mkdir(parents=True)
    monkeypatch.setattr(online, "paired_comparison", lambda config, checkpoint=None: {"scored": checkpoint})
    at_steps = online.at_online_steps(tmp_path, offline, 0, 3, {}, RECIPES["arith"])
    assert at_steps == {"online_steps": 7, "step": 6, "scored": "step-000000006"}
    assert online.at_online_steps(tmp_path, mpo, 0, 3, {}, RECIPES["arith"]) is None, "only offline runs"


def test_each_part_is_paired_with_the_mpo_run_of_its_seed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MPO against a part: both last checkpoints of one seed scored on the same held-out prompts, prompt by
    prompt, once the MPO run has all its rounds; and the seeds' spread of those differences."""
    online = _bench_module("online")
    recipe = RECIPES["arith"]
    mpo, dpo = (online.variant_config(tmp_path, variant, 0, 2) for variant in ("mpo", "dpo"))
    assert online.mpo_gain_over(tmp_path, "dpo", 0, 2, {}, recipe) is None, "no MPO run yet"
    store = RunStore(mpo.store_dir)
    store.put_run(controller_pb2.Run(run_id=mpo.run_id))
    store.commit_pairs(mpo.run_id, 1, [])
    store.store_round(common_pb2.RoundMetrics(run_id=mpo.run_id, round=1, train_steps=2))
    assert online.mpo_gain_over(tmp_path, "dpo", 0, 2, {}, recipe) is None, "MPO has one of its two rounds"
    store.commit_pairs(mpo.run_id, 2, [])
    store.store_round(common_pb2.RoundMetrics(run_id=mpo.run_id, round=2, train_steps=2))

    # Stand-ins for the exported checkpoints and their greedy scores (the real ones take minutes to make).
    answers = {
        mpo.trainer.checkpoint_dir.parent: (1.0, 1.0, 0.0, 1.0),
        dpo.trainer.checkpoint_dir.parent: (1.0, 0.0, 0.0, 1.0),
    }
    scored: list[tuple[Path, Path, int]] = []

    def greedy(model: Path, heldout: Path, prompts: int, max_tokens: int) -> EvalResult:
        scored.append((model, heldout, prompts))
        per_prompt = answers[model]
        accuracy = sum(per_prompt) / len(per_prompt)
        return EvalResult(len(per_prompt), 1, accuracy, accuracy, 0.0, per_prompt=per_prompt)

    monkeypatch.setattr(online, "exported_model", lambda config, checkpoint=None: config.trainer.checkpoint_dir.parent)
    monkeypatch.setattr(online, "greedy_evaluation", greedy)
    # MPO right on one prompt DPO-only misses: +25 points, and one of four prompts differing gives SE 25.
    against = online.mpo_gain_over(tmp_path, "dpo", 0, 2, {}, recipe)
    assert against == {"gain_points": 25.0, "gain_standard_error_points": 25.0, "gain_in_standard_errors": 1.0}
    assert {(heldout, prompts) for _, heldout, prompts in scored} == {(mpo.data.heldout, mpo.rounds.eval_prompts)}
    assert online.mpo_gain_over(tmp_path, "mpo", 0, 2, {}, recipe) is None, "MPO is not compared with itself"

    runs = [
        {"tasks": {}, "paired": None, "mpo_gain_over_this": {"gain_points": g, "gain_standard_error_points": 0.5}}
        for g in (-0.85, 0.4, -0.8)
    ]  # shapes, MPO over DPO-only on seeds 0-2 (docs/results.md)
    summary = online.summarize_seeds(runs)["mpo_gain_over_this"]
    assert summary["paired_mean_gain_points"] == -0.42 and summary["seed_spread_standard_error_points"] == 0.41


def test_online_benchmark_reports_the_seeds_spread_beside_the_paired_error() -> None:
    online = _bench_module("online")

    def run(gain: float, error: float) -> dict:
        return {
            "tasks": {"arith": {"gain_points": gain}},
            "paired": {"gain_points": gain, "gain_standard_error_points": error},
        }

    # Probe H's three seeds (docs/results.md): the seeds disagree by more than each run's paired error.
    summary = online.summarize_seeds([run(4.45, 0.76), run(2.4, 0.76), run(2.8, 0.8)])
    assert summary["paired_mean_gain_points"] == summary["mean_gain_points"] == 3.22
    assert summary["paired_mean_standard_error_points"] == 0.45
    assert summary["seed_spread_standard_error_points"] == 0.63
    at_steps = [
        run(gain, 0.8) | {"paired_at_online_steps": {"gain_points": gain - 1, "gain_standard_error_points": 0.7}}
        for gain in (3.0, 2.0)
    ]
    assert online.summarize_seeds(at_steps)["at_online_steps"]["paired_mean_gain_points"] == 1.5
    assert "at_online_steps" not in summary
    single = online.summarize_seeds([run(4.45, 0.76)])
    assert "seed_spread_standard_error_points" not in single, "one seed has no spread"
    assert single["paired_mean_standard_error_points"] == 0.76


def test_packing_speed_benchmark_compares_packed_with_padded_micro_batches() -> None:
    result_ = run_bench("packing_speed.py", "--steps 2 --warmup 0")
    padded, packed = result_["arms"]["padded"], result_["arms"]["packed"]
    assert packed["positions_per_micro_batch"] < padded["positions_per_micro_batch"]
    assert result_["speedup_packed_over_padded"] > 0
    assert result_["max_abs_logprob_difference"] < 1e-3, "the layouts must give the same log-probs"


@pytest.mark.slow
def test_soak_benchmark_counts_each_status_while_a_run_trains(tmp_path: Path) -> None:
    # The untrained tiny model as the demo's base (`prepare` reuses a base with its bootstrap.json): a soak
    # measures serving, not accuracy, and a warm start would cost a minute.
    base = build_text_model(tmp_path / "base", task_corpus(["arith"], seed=0), seed=0)
    (base / "bootstrap.json").write_text("{}")
    arguments = (
        f"--workdir {tmp_path} --train-prompts 64 --heldout-prompts 8 --clients 4 --seconds 20 "
        "--invalid-share 0.2 --round-prompts 4 --round-samples 2 --rss-interval 2"
    )
    soak = run_bench("soak.py", arguments, timeout=900)
    results, verdict = soak["results"], soak["verdict"]
    valid, invalid = results["status_counts"]["valid"], results["status_counts"]["invalid"]
    assert valid["OK"] > 0 and set(valid) <= {"OK", "RESOURCE_EXHAUSTED"}
    assert invalid["INVALID_ARGUMENT"] > 0 and set(invalid) <= {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}
    assert verdict["errors_other_than_resource_exhausted"] == 0
    assert results["calls"] == sum(valid.values()) + sum(invalid.values()) and results["calls_per_second"] > 0
    assert 0 < results["ok_latency_seconds"]["p50"] <= results["ok_latency_seconds"]["p99"]
    assert results["policy_versions_seen"] and results["policy_version_at_start"] == 0
    # The run trained beside the clients, and the bench stopped it.
    assert results["rounds_during_soak"] >= 1 and results["run_state_at_end"] == "RUN_STATE_STOPPED"
    rss = results["rss"]
    roles = {name.split("/")[0] for name in rss["processes"]}
    assert {"ingress", "rollout_replica", "reward_worker", "trainer_rank", "controller"} <= roles
    assert sum(name.startswith("trainer_rank/") for name in rss["processes"]) == 2, "the demo's two ranks"
    for name, process in rss["processes"].items():
        assert len(process["rss_bytes"]) == len(rss["sample_seconds"]) and any(process["rss_bytes"])
        assert verdict["rss_growth_after_warmup_bytes"][name] == process["growth_after_warmup_bytes"]


def test_pair_bytes_benchmark_measures_both_forms_of_a_shapes_round() -> None:
    result = run_bench("pair_bytes.py", "--prompts 8 --n 4")["result"]
    assert result["pairs"] > result["prompts_with_pairs"] > 0 and result["image_bytes_per_prompt"] > 0
    assert set(result["bytes_per_pair"]) == {"build_pairs_response", "train_request", "stored_shard"}
    for sizes in result["bytes_per_pair"].values():
        assert sizes["legacy"] > sizes["new"] > 0 and sizes["ratio_legacy_over_new"] > 1, sizes


def test_hallucination_benchmark_configs_and_paired_errors(tmp_path: Path) -> None:
    bench = _bench_module("hallucination")
    mpo = bench.variant_config(tmp_path, "mpo", 0, 20, {})
    assert mpo.rollout.backend == "transformers" and mpo.rounds.eval_every == 20
    assert mpo.trainer.objective.terms == {"preference": 0.8, "quality": 0.2, "generation": 1.0}
    assert bench.variant_config(tmp_path, "sft", 0, 20, {}).trainer.objective.terms == {"generation": 1.0}
    probe = bench.variant_config(tmp_path, "mpo", 0, 20, {"rounds.temperature": 0.7})
    assert probe.run_id != mpo.run_id and probe.rounds.temperature == 0.7
    # The paper's mixed setting: both tasks' prompts half and half, every held-out prompt of both evaluated.
    mixed = bench.variant_config(tmp_path, "mixed", 0, 20, {})
    assert mixed.trainer.objective.terms == mpo.trainer.objective.terms and mixed.run_id != mpo.run_id
    assert mixed.rounds.task_mix == {"shapes": 1, "describe": 1} and mpo.rounds.task_mix == {}
    assert (mixed.data.train.name, mixed.data.heldout.name) == ("mixed-train.jsonl", "mixed-heldout.jsonl")
    assert mixed.rounds.eval_prompts == bench.SHAPES_HELDOUT + bench.HELDOUT_SCENES
    # The ground-truth reference: describe prompts judged by a plug-in verifier that reads the scene in meta.
    verified = bench.variant_config(tmp_path, "verified", 0, 20, {})
    assert (verified.data.train.name, verified.data.heldout.name) == ("verified-train.jsonl", "describe-heldout.jsonl")
    assert verified.reward.verifiers == {"described": f"{ROOT / 'bench' / 'grounded_verifier.py'}:described"}
    assert verified.trainer.objective.terms == mpo.trainer.objective.terms and verified.run_id != mpo.run_id
    # A base warm-started with the image encoder at a tenth of the rate sits beside the default one.
    seeing = bench.variant_config(tmp_path, "mpo", 0, 20, {}, vision_lr_ratio=0.1)
    assert (seeing.model, mpo.model) == (tmp_path / "base-vision0.1", tmp_path / "base")
    assert (seeing.run_id, mpo.run_id) == ("describe-mpo-vision0.1-seed0", "describe-mpo-seed0")
    assert seeing.trainer.checkpoint_dir != mpo.trainer.checkpoint_dir
    # Out of range, the command says so before any work (nothing written under the workdir).
    command = [sys.executable, str(ROOT / "bench" / "hallucination.py"), "--vision-lr-ratio", "1.5",
               "--workdir", str(tmp_path / "work")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2 and "--vision-lr-ratio: Input should be less than or equal to 1" in result.stderr
    assert not (tmp_path / "work").exists()

    # Four scenes: two hallucinated descriptions fixed, one made: rate 0.5 -> 0.25, paired over the scenes.
    change = bench.paired_change([1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0])
    assert (change["base"], change["final"], change["change"]) == (0.5, 0.25, -0.25)
    assert change["standard_error"] == pytest.approx(0.4787, abs=1e-4)  # stdev([-1, -1, 1, 0]) / 2

    def run(rate_change: float, error: float) -> dict:
        entry = {"base": 0.8, "change": rate_change, "standard_error": error}
        return {"paired": {"rate": entry, "mentions": entry, "recall": entry}}

    summary = bench.summarize_seeds([run(-0.3, 0.03), run(-0.2, 0.04), run(-0.1, 0.03)])
    assert summary["rate"]["mean_change"] == -0.2 and summary["rate"]["relative_change"] == -0.25
    assert "shapes_accuracy" not in summary, "describe-only runs have no accuracy to summarize"
    mixed_runs = [run(-0.3, 0.03), run(-0.2, 0.04)]
    for mixed_run, gain in zip(mixed_runs, (0.02, 0.04), strict=True):
        mixed_run["paired"]["shapes_accuracy"] = {"base": 0.4, "change": gain, "standard_error": 0.01}
    assert bench.summarize_seeds(mixed_runs)["shapes_accuracy"]["mean_change"] == 0.03
    assert summary["rate"]["paired_standard_error"] == pytest.approx(0.0194, abs=1e-4)
    assert summary["rate"]["seed_spread_standard_error"] == pytest.approx(0.0577, abs=1e-4)

    # DropoutNTP's two sides judged against the scene (a red circle and a blue square): in the first pair
    # the chosen side is the grounded one; in the second the blind side names less and so invents less.
    scenes = {"s": [("red", "circle"), ("blue", "square")]}
    prompt = common_pb2.Prompt(id="s", question="Describe the image.", task="describe")
    pairs = [
        common_pb2.PreferencePair(prompt=prompt, chosen="I see a red circle and a blue square.",
                                  rejected="I see a red circle and a green triangle."),
        common_pb2.PreferencePair(prompt=prompt, chosen="I see a red circle, a green circle and two squares.",
                                  rejected="I see a red circle."),
    ]  # fmt: skip
    sides = bench.compare_sides(pairs, scenes)
    assert sides["pairs"] == 2 and sides["mentions"] == [2.5, 1.5] and sides["false_mentions"] == [1.0, 0.5]
    assert sides["recall"] == [0.75, 0.5]
    assert (sides["chosen_fewer_false_mentions"], sides["chosen_more_false_mentions"]) == (0.5, 0.5)
    assert (sides["chosen_fewer_mentions"], sides["chosen_more_mentions"]) == (0.0, 0.5)  # the first: 2 and 2
    assert bench.compare_sides([], scenes) == {"pairs": 0}


def test_grounded_verifier_wants_the_scene_listed_right_and_the_answer_derived_from_it() -> None:
    grounded = load_verifier(f"{ROOT / 'bench' / 'grounded_verifier.py'}:grounded")  # as labelling loads it
    scene = [{"colour": "red", "shape": "circle"}, {"colour": "blue", "shape": "square"},
             {"colour": "red", "shape": "square"}]  # fmt: skip
    record = PromptRecord(id="s", question="How many red shapes are there?", answer="2", task="shapes",
                          meta={"scene": scene})  # fmt: skip
    derived = "Red shapes: square, circle. That is 2.\nFinal answer: 2"
    assert grounded(f"I see a blue square, a red circle and a red square. {derived}", record)  # any order
    # The same answer and steps after a false listing (a green square for the blue one), or after none.
    assert not grounded(f"I see a red circle, a green square and a red square. {derived}", record)
    assert not grounded(f"I see a red circle and a red square. {derived}", record)
    assert not grounded(derived, record)
    # A true listing, then the right answer by luck (steps that do not derive it), or a wrong answer.
    listed = "I see a red circle, a blue square and a red square."
    assert not grounded(f"{listed} Red shapes: circle. That is 1.\nFinal answer: 2", record)
    assert not grounded(f"{listed} Red shapes: circle, square, square. That is 3.\nFinal answer: 3", record)
    assert not grounded(listed, record)  # no final answer
    # `counted` wants only as many shapes as the scene has, whichever: a false one passes, a missing one not.
    counted = load_verifier(f"{ROOT / 'bench' / 'grounded_verifier.py'}:counted")
    assert counted(f"I see a red circle, a green square and a red square. {derived}", record)
    assert not counted(f"I see a red circle and a red square. {derived}", record)
    assert not counted(f"{listed} Red shapes: circle. That is 1.\nFinal answer: 2", record)
    with pytest.raises(KeyError, match=r"prompt 's' has no meta.scene"):
        grounded(f"{listed} {derived}", record.model_copy(update={"meta": {}}))
    # `described`: F1 of precision (true mentions / mentions) and recall (the scene's share named).
    described = load_verifier(f"{ROOT / 'bench' / 'grounded_verifier.py'}:described")
    assert described("I see a blue square, a red circle and a red square.", record) == 1.0
    assert described("I see a red circle and a green triangle.", record) == pytest.approx(2 * 0.5 * (1 / 3) / (5 / 6))
    assert described("I see nothing.", record) == 0.0
    assert described("I see a green triangle.", record) == 0.0


def test_perception_benchmark_tells_seeing_from_guessing(tmp_path: Path) -> None:
    bench = _bench_module("perception")
    scenes = {"a": [("red", "circle"), ("blue", "square")], "b": [("green", "triangle")], "c": [("yellow", "circle")]}
    seeing = [
        ("a", "I see a blue square and a red circle. That is 2.\nFinal answer: 2"),
        ("b", "The image shows a green triangle."),
        ("c", "Circles: yellow. That is 1.\nFinal answer: 1"),  # no listing: only counted in `listing`
    ]
    judged = bench.judge_answers(seeing, scenes)
    assert judged["answers"] == 3 and judged["listing"] == pytest.approx(2 / 3, abs=1e-4)
    assert judged["own_scene"] == {"recall": 1.0, "precision": 1.0, "count": 1.0, "exact": 1.0}
    # Against the next prompt's scene (a -> b, b -> c): nothing holds, so the image added everything.
    assert judged["other_scene"]["recall"] == 0.0 and judged["recall_margin"] == 1.0
    # A policy that says the same thing whatever the image names as much of other scenes as of its own.
    blind = bench.judge_answers([(pid, "I see a red circle.") for pid in scenes], scenes)
    assert blind["own_scene"]["recall"] == blind["other_scene"]["recall"] > 0 and blind["recall_margin"] == 0.0
    assert bench.judge_answers([("a", "Final answer: 2")] * 2, scenes) == {"answers": 2, "listing": 0.0}
    with pytest.raises(ValueError, match="at least two prompts"):
        bench.judge_answers([("a", "I see a red circle.")], scenes)

    # The command names what is missing: here the run.
    command = [sys.executable, str(ROOT / "bench" / "perception.py"), "--store", str(tmp_path / "store"),
               "--run-id", "nope", "--data", str(tmp_path / "prompts.jsonl")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2 and "--run-id: no run 'nope'" in result.stderr, result.stderr[-500:]
    command = [sys.executable, str(ROOT / "bench" / "perception.py"), "--model", str(tmp_path / "model"),
               "--data", str(tmp_path / "prompts.jsonl"), "--limit", "1"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2 and "--limit: at least 2" in result.stderr, result.stderr[-500:]

    # A model's greedy answers, end to end: a random-weight image-text model answering describe prompts.
    splits = make_splits("describe", seed=0, train=1, heldout=3, out_dir=tmp_path / "data")
    write_prompts_jsonl(splits["heldout"], tmp_path / "data" / "heldout.jsonl")

    # A run's committed pairs: each round judged on its own, and the rounds pooled.
    store = RunStore(tmp_path / "store")
    store.put_run(controller_pb2.Run(run_id="r"))
    a, b, c = (record.id for record in splits["heldout"])
    for round_index, prompt_ids in ((1, [a, b]), (2, [b, c, c])):
        store.commit_pairs("r", round_index, [
            common_pb2.PreferencePair(id=f"{round_index}-{i}", prompt=common_pb2.Prompt(id=prompt_id),
                                      chosen="I see a red circle.", rejected="Final answer: 1")
            for i, prompt_id in enumerate(prompt_ids)
        ])  # fmt: skip
    from_pairs = run_bench("perception.py", f"--store {tmp_path / 'store'} --run-id r --rounds 1,2 "
                                            f"--data {tmp_path / 'data' / 'heldout.jsonl'}")  # fmt: skip
    assert [from_pairs["rounds"][r]["chosen"]["answers"] for r in ("1", "2")] == [2, 3]
    assert from_pairs["pooled"]["chosen"]["answers"] == from_pairs["pooled"]["rejected"]["answers"] == 5
    assert from_pairs["pooled"]["rejected"]["listing"] == 0.0 and from_pairs["pooled"]["chosen"]["listing"] == 1.0
    model = build_image_text_model(tmp_path / "model", task_corpus(["describe"], per_task=200), seed=0)
    greedy = run_bench("perception.py", f"--model {model} --data {tmp_path / 'data' / 'heldout.jsonl'} --limit 2")
    assert greedy["model"] == str(model) and greedy["greedy"]["answers"] == 2
    assert greedy["versions"]["transformers"] == transformers.__version__, "what ran, beside the figure"

    # The linear probe, end to end on the same model: every count probed, on the features' own scale.
    probe_data = make_splits("describe", seed=1, train=1, heldout=16, out_dir=tmp_path / "probe")
    write_prompts_jsonl(probe_data["heldout"], tmp_path / "probe" / "heldout.jsonl")
    probed = run_bench("perception.py", f"--model {model} --data {tmp_path / 'probe' / 'heldout.jsonl'} --features")
    assert probed["probe"]["images"] == 16
    assert list(probed["probe"]["count_r2"]) == ["red", "green", "blue", "yellow", "circle", "square", "triangle",
                                                 "all shapes"]  # fmt: skip
    assert all(r2 <= 1.0 for r2 in probed["probe"]["count_r2"].values())
    assert probed["probe"]["token_norm"] > 0 and probed["probe"]["text_embedding_norm"] > 0


def test_linear_probe_reads_what_the_features_hold_and_nothing_else() -> None:
    bench = _bench_module("perception")
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(400, 16, generator=generator, dtype=torch.float64)
    readable = features @ torch.randn(16, generator=generator, dtype=torch.float64)
    readable += 0.1 * torch.randn(400, generator=generator, dtype=torch.float64)
    unrelated = torch.randn(400, generator=generator, dtype=torch.float64)
    held, absent = bench.ridge_r2(features, torch.stack([readable, unrelated], dim=1))
    assert held > 0.95 and absent < 0.1
    with pytest.raises(ValueError, match="at least 8 images"):
        bench.ridge_r2(features[:6], readable[:6, None])

    scene = [{"shape": "circle", "colour": "red"}, {"shape": "square", "colour": "red"}]
    record = PromptRecord(id="s", question="How many?", task="shapes", meta={"scene": scene})
    names, counts = bench.count_targets([record])
    assert dict(zip(names, counts[0].tolist(), strict=True)) == {
        "red": 2, "green": 0, "blue": 0, "yellow": 0, "circle": 1, "square": 1, "triangle": 0, "all shapes": 2
    }  # fmt: skip
