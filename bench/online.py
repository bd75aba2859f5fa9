"""The embedded demo as a benchmark: held-out accuracy before and after the online rounds, MPO against
its parts, where a round's time goes, and async against sync mode. Prints JSON.

Every variant runs a demo recipe (`mpo/demo.py`, `--task arith` or `shapes`) from the same base policy,
seeds and prompts:
  mpo      the recipe's objective (DPO + BCO + SFT; arith halves the paper's SFT weight);
  sft      only the generation term on the chosen answers (rejection-sampling fine-tuning);
  dpo      only the preference term;
  bco      only the quality term;
  dpo+sft  the recipe's preference and generation weights, without the quality term;
  offline  the MPO variant sampling the base policy in every round (`rounds.sample_from: base`): the
           paper's offline MPO, with the same prompts, pair rules and optimizer steps as the online run;
  async the MPO variant in async mode (rollout of round k+1 overlaps training of round k); on a CPU-only
        host, compare the modes as on separate GPUs by pinning rollout and trainer to disjoint cores
        (`--set 'rollout.cpu_affinity=[1]' --set 'trainer.cpu_affinity=[0]'`; docs/results.md).
Accuracy is greedy on all held-out prompts (2,000), with its standard error; the gain's standard error
treats base and final accuracy as independent (conservative: they are measured on the same prompts).
`paired` re-evaluates the base and the run's last checkpoint on those prompts (transformers, greedy) and
gives the gain with its paired standard error, from the per-prompt differences, and the share of
degenerate answers before and after (`--no-paired` skips it). Where the MPO run of the same seed is in the
workdir (run in this bench or an earlier one), `mpo_gain_over_this` pairs the two last checkpoints prompt
by prompt: MPO's accuracy less this variant's; over seeds, compare a recipe on the seeds' spread.
`--set KEY=VALUE` (repeatable; a dotted path into the run config, a YAML value) probes a change of the
recipe; such runs get their own run ids, so a probe never reads back a run of another config.

    .venv/bin/python bench/online.py [--task arith|shapes] [--seeds 0,1] [--rounds 10]
                                     [--variants mpo,sft,dpo,bco,dpo+sft,offline,async] [--workdir DIR]
                                     [--set rounds.prompts_per_round=256 ...] [--no-paired]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

from mpo.config import RunConfig, run_config
from mpo.data.loader import load_prompts
from mpo.demo import RECIPES, DemoRecipe, demo_run_config, prepare
from mpo.embedded import run_embedded
from mpo.evaluation import EvalResult, evaluate, paired_gain
from mpo.info import installed_versions
from mpo.models.generate import Sampling, TransformersGenerator
from mpo.overrides import OverrideError, parse_overrides
from mpo.services.controller.store import RunStore
from mpo.trainer.export import export_checkpoint
from mpo.v1 import common_pb2, controller_pb2

VARIANTS = ("mpo", "sft", "dpo", "bco", "dpo+sft", "offline", "async")
#: The single-term ablations, each at weight 1; `dpo+sft` keeps the recipe's two weights; the MPO variants
#: (mpo, offline, async) the recipe's objective.
_SINGLE_TERMS = {"sft": "generation", "dpo": "preference", "bco": "quality"}
_PHASES = ("generate", "label", "commit", "train", "publish", "eval", "overhead")


def standard_error(accuracy: float, prompts: int) -> float:
    return math.sqrt(accuracy * (1 - accuracy) / prompts) if prompts else 0.0


def variant_config(
    workdir: Path,
    variant: str,
    seed: int,
    rounds: int,
    overrides: dict[str, Any] | None = None,
    recipe: DemoRecipe = RECIPES["arith"],
) -> RunConfig:
    overrides = overrides or {}
    probe = "-" + hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8] if overrides else ""
    mode = "async" if variant == "async" else "sync"
    raw = demo_run_config(workdir, seed=seed, rounds=rounds, mode=mode, recipe=recipe)
    raw["run_id"] = f"bench-{variant.replace('+', '-')}{probe}-seed{seed}"
    if variant in _SINGLE_TERMS:
        raw["objective"] = {"terms": {_SINGLE_TERMS[variant]: 1.0}}
    elif variant == "dpo+sft":
        raw["objective"]["terms"].pop("quality")
    elif variant == "offline":
        raw["rounds"]["sample_from"] = "base"
        # Every round's checkpoint, to also compare at the online run's number of optimizer steps.
        raw["trainer"]["keep_checkpoints"] = rounds + 1
    raw["store_dir"] = str(workdir / "bench-store")
    for section, key in (("rollout", "weights_dir"), ("trainer", "checkpoint_dir"), ("trainer", "publish_dir")):
        raw[section][key] = str(workdir / "bench-state" / raw["run_id"] / key)
    raw["rounds"]["eval_every"] = rounds  # base and final only: every evaluation costs round time
    return run_config(raw, source=f"bench variant {variant}", overrides=overrides)


@functools.cache
def greedy_evaluation(model_dir: Path, heldout: Path, prompts: int, max_tokens: int) -> EvalResult:
    records = load_prompts(heldout).records[:prompts]  # the prompts the controller evaluates on
    return evaluate(TransformersGenerator(model_dir), records, Sampling(n=1, max_new_tokens=max_tokens))


def exported_model(config: RunConfig, checkpoint: str | None = None) -> Path:
    """The run's last checkpoint, or the one named (a kept `step-N` directory), exported once."""
    assert config.trainer is not None
    checkpoints = config.trainer.checkpoint_dir
    name = checkpoint or (checkpoints / "LATEST").read_text().strip()
    model = checkpoints.parent / f"exported-{name}"  # a run extended later exports its new last one
    if not (model / "config.json").exists():
        export_checkpoint(checkpoints / name, model)
    return model


def heldout_evaluation(config: RunConfig, model: Path) -> EvalResult:
    assert config.data is not None
    return greedy_evaluation(model, config.data.heldout, config.rounds.eval_prompts, config.rounds.heldout_max_tokens)


def paired_gain_points(before: EvalResult, after: EvalResult) -> dict[str, Any]:
    gain, error = paired_gain(before, after)
    return {
        "gain_points": round(100 * gain, 2),
        "gain_standard_error_points": round(100 * error, 2),
        "gain_in_standard_errors": round(gain / error, 2) if error else None,
    }


def paired_comparison(config: RunConfig, checkpoint: str | None = None) -> dict[str, Any]:
    """Base against the run's last checkpoint, or the one named, on the same held-out prompts."""
    base = heldout_evaluation(config, config.model)
    final = heldout_evaluation(config, exported_model(config, checkpoint))
    return {
        "base": round(base.accuracy, 4),
        "final": round(final.accuracy, 4),
        **paired_gain_points(base, final),
        # Answers with no final answer, a repetition loop, or cut at the token limit (the MPO paper's count).
        "degenerate": [round(base.degenerate, 4), round(final.degenerate, 4)],
    }


def completed_mpo_run(
    workdir: Path, seed: int, rounds: int, overrides: dict[str, Any], recipe: DemoRecipe
) -> tuple[RunConfig, list[common_pb2.RoundMetrics]] | None:
    """The MPO variant of this seed, with its round records, once all its rounds are stored."""
    config = variant_config(workdir, "mpo", seed, rounds, overrides, recipe)
    records = RunStore(config.store_dir).round_records(config.run_id or "")
    return (config, records) if len(records) >= rounds else None


def mpo_gain_over(
    workdir: Path, variant: str, seed: int, rounds: int, overrides: dict[str, Any], recipe: DemoRecipe
) -> dict[str, Any] | None:
    """MPO's last checkpoint against this variant's, same seed, prompt by prompt. Both start from one base,
    so this is the difference of their gains, without the prompts' own difficulty. None for MPO itself, or
    while the MPO run of this seed is not complete."""
    if variant == "mpo" or (mpo := completed_mpo_run(workdir, seed, rounds, overrides, recipe)) is None:
        return None
    mpo_config, _ = mpo
    config = variant_config(workdir, variant, seed, rounds, overrides, recipe)
    this = heldout_evaluation(config, exported_model(config))
    return paired_gain_points(this, heldout_evaluation(mpo_config, exported_model(mpo_config)))


def run_variant(
    workdir: Path,
    variant: str,
    seed: int,
    rounds: int,
    *,
    paired: bool,
    overrides: dict[str, Any],
    recipe: DemoRecipe = RECIPES["arith"],
) -> dict[str, Any]:
    """Run one variant, or read it back when the bench store has it completed (an interrupted bench
    continues where it stopped instead of repeating finished runs)."""
    config = variant_config(workdir, variant, seed, rounds, overrides, recipe)
    store = RunStore(config.store_dir)
    run_id = config.run_id or ""
    stored = store.get_run(run_id)
    wall: float | None = None
    if stored is not None and stored.state == controller_pb2.RUN_STATE_COMPLETED and stored.current_round == rounds:
        print(f"  {run_id}: completed earlier, read from the store", flush=True)
        records = store.round_records(run_id)
    else:
        started = time.perf_counter()
        run_id, records = asyncio.run(run_embedded(config))
        wall = round(time.perf_counter() - started, 1)
    run = store.get_run(run_id)
    assert run is not None and records, f"{run_id} produced no rounds"
    prompts = config.rounds.eval_prompts
    base, final = run.base_eval_accuracy, records[-1].eval_accuracy
    tasks = {}
    for task, accuracy in final.items():
        before = base.get(task, 0.0)
        error = math.hypot(standard_error(before, prompts), standard_error(accuracy, prompts))
        gain = 100 * (accuracy - before)
        tasks[task] = {
            "base": round(before, 4),
            "final": round(accuracy, 4),
            "gain_points": round(gain, 2),
            "gain_standard_error_points": round(100 * error, 2),
            "gain_in_standard_errors": round(gain / (100 * error), 2) if error else None,
        }
    phases = {phase: sum(getattr(r.timings, phase) for r in records) for phase in _PHASES}
    rounds_time = sum(r.timings.total for r in records)
    pairs = sum(r.labels.pairs_correctness + r.labels.pairs_dropout_ntp for r in records)
    first_start = records[0].finished_at - records[0].timings.total
    return {
        "run_id": run_id,
        "tasks": tasks,
        "pairs_trained": pairs,
        "optimizer_steps": sum(r.train_steps for r in records),
        "rounds_seconds": round(records[-1].finished_at - first_start, 1),
        "pairs_per_second": round(pairs / (records[-1].finished_at - first_start), 3),
        "phase_share": {phase: round(seconds / rounds_time, 4) for phase, seconds in phases.items()},
        "staleness_max": max(r.staleness_max for r in records),
        "wall_seconds_with_startup": wall,
        "paired": paired_comparison(config) if paired else None,
        "paired_at_online_steps": at_online_steps(workdir, config, seed, rounds, overrides, recipe) if paired else None,
    }


def at_online_steps(
    workdir: Path, config: RunConfig, seed: int, rounds: int, overrides: dict[str, Any], recipe: DemoRecipe
) -> dict[str, Any] | None:
    """An offline run against the base at the optimizer step the online (`mpo`) run of the same seed ended
    on: sampling the base gives more prompts with both right and wrong answers, so offline rounds make
    more pairs and steps, and equal steps (hence about equal pairs, at the same batch) is the fair
    comparison. The newest kept checkpoint at or before that step; None for other variants, or before
    the online run exists."""
    if config.rounds.sample_from != "base" or config.trainer is None:
        return None
    online = completed_mpo_run(workdir, seed, rounds, overrides, recipe)
    if online is None:
        return None
    _, online_records = online
    steps = sum(r.train_steps for r in online_records)
    kept = sorted(int(d.name.removeprefix("step-")) for d in config.trainer.checkpoint_dir.glob("step-*"))
    step = max((s for s in kept if s <= steps), default=None)
    if step is None:
        return None
    return {"online_steps": steps, "step": step, **paired_comparison(config, f"step-{step:09d}")}


def summarize_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One variant over its seeds: the mean gain with two errors. The paired one counts only the
    evaluations' noise (root of the summed variances over n); the seeds' spread (their standard deviation
    over √n) also counts how differently the same recipe trains from seed to seed, which on these runs
    is the larger of the two, so a recipe's mean is compared on that one."""
    gains = [t["gain_points"] for r in runs for t in r["tasks"].values()]
    summary: dict[str, Any] = {"mean_gain_points": round(statistics.fmean(gains), 2) if gains else None}
    summary |= _paired_summary([r["paired"] for r in runs if r["paired"]])
    if at_steps := [r["paired_at_online_steps"] for r in runs if r.get("paired_at_online_steps")]:
        summary["at_online_steps"] = _paired_summary(at_steps)
    if against_mpo := [r["mpo_gain_over_this"] for r in runs if r.get("mpo_gain_over_this")]:
        summary["mpo_gain_over_this"] = _paired_summary(against_mpo)
    return summary


def _paired_summary(paired: list[dict[str, Any]]) -> dict[str, Any]:
    if not paired:
        return {}
    gains = [p["gain_points"] for p in paired]
    errors = [p["gain_standard_error_points"] for p in paired]
    summary = {
        "paired_mean_gain_points": round(statistics.fmean(gains), 2),
        "paired_mean_standard_error_points": round(math.hypot(*errors) / len(paired), 2),
    }
    if len(paired) > 1:
        summary["seed_spread_standard_error_points"] = round(statistics.stdev(gains) / math.sqrt(len(paired)), 2)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--task", choices=sorted(RECIPES), default="arith", help="the demo recipe to run")
    parser.add_argument("--workdir", type=Path, default=None, help="default: the recipe's (mpo-demo, mpo-demo-shapes)")
    parser.add_argument("--no-paired", dest="paired", action="store_false", help="skip the paired re-evaluation")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="change the run config (dotted key, YAML value); repeatable")  # fmt: skip
    args = parser.parse_args()
    variants = args.variants.split(",")
    if unknown := sorted(set(variants) - set(VARIANTS)):
        parser.error(f"--variants: unknown {', '.join(unknown)} (choose from {', '.join(VARIANTS)})")
    try:
        overrides = parse_overrides(args.overrides)
    except OverrideError as exc:
        parser.error(str(exc))
    recipe = RECIPES[args.task]
    workdir = args.workdir or recipe.workdir
    started = time.perf_counter()
    prepare(workdir, recipe=recipe, say=lambda line: print(line, flush=True))
    prepare_seconds = time.perf_counter() - started
    runs = [(variant, int(seed)) for variant in variants for seed in args.seeds.split(",")]
    results: dict[str, dict[str, Any]] = {}
    for variant, seed in runs:
        print(f"running {variant} seed {seed} ...", flush=True)
        results[f"{variant}/seed{seed}"] = run_variant(
            workdir, variant, seed, args.rounds, paired=args.paired, overrides=overrides, recipe=recipe
        )
    for variant, seed in runs:  # after all of them, so MPO may come in any place in --variants
        results[f"{variant}/seed{seed}"]["mpo_gain_over_this"] = (
            mpo_gain_over(workdir, variant, seed, args.rounds, overrides, recipe) if args.paired else None
        )
    summary: dict[str, Any] = {
        variant: summarize_seeds([r for key, r in results.items() if key.startswith(f"{variant}/")])
        for variant in variants
    }
    if "mpo" in summary and "async" in summary:
        sync_rate = [r["pairs_per_second"] for k, r in results.items() if k.startswith("mpo/")]
        async_rate = [r["pairs_per_second"] for k, r in results.items() if k.startswith("async/")]
        summary["async_over_sync_pairs_per_second"] = round(
            (sum(async_rate) / len(async_rate)) / (sum(sync_rate) / len(sync_rate)), 3
        )
    print(
        json.dumps(
            {
                "benchmark": "online",
                "task": recipe.task,
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                "versions": installed_versions(),
                "rounds": args.rounds,
                "overrides": overrides,
                "prepare_seconds": round(prepare_seconds, 1),
                "summary": summary,
                "runs": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
