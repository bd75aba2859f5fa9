"""DropoutNTP against hallucination, measured: online MPO rounds on `describe`, whose prompts have no
ground truth, so every pair is a DropoutNTP pair (chosen: an answer written with the image; rejected: its
first half continued without the image). Prints JSON.

The base is the tiny image-text policy (LLaVA-style, CLIP tower + Qwen2) warm-started on `shapes`
demonstrations and `describe` reference descriptions ("I see a red circle, a blue square and ...", every
shape of the scene), so it describes scenes as well as its tiny vision tower sees them. Each seed runs
the online rounds on the describe prompts (transformers rollout, reward workers, 2 DeepSpeed ZeRO-3
ranks) and evaluates the base and the last round on the held-out scenes. Hallucination is judged
exactly from each scene (`mpo.grading.hallucination`): rate (share of descriptions naming a shape,
colour or count not in the scene), false mentions per description, and recall. `paired` re-generates
the base's and the run's last checkpoint's greedy descriptions (transformers) and gives each change
with its paired standard error over the scenes. Variants: `mpo` (the paper's objective) and `sft`
(only the generation term on the chosen answers: the policy imitating its own image-conditioned
samples, without DropoutNTP's preference signal), and `mixed`, the paper's setting: the MPO rounds draw
`shapes` questions (correctness pairs) and `describe` prompts (DropoutNTP pairs) half and half, and the
evaluation reports both held-out shapes accuracy (the 200 questions the warm start was scored on) and
hallucination on the same 500 scenes. `verified` is the ground-truth reference, not DropoutNTP: the same
describe prompts, each carrying its scene in `meta`, judged by a plug-in verifier that scores a
description by the F1 of its precision and recall against the scene (`bench/grounded_verifier.py`'s
`described`, correct at `reward.correct_threshold`), so the pairs are correctness pairs.

`--vision-lr-ratio` warm-starts a base whose image encoder trains at that fraction of the rate
(`BootstrapConfig.vision_lr_ratio`; at the full rate the tiny tower's features are spoiled), kept beside
the default base in the same workdir, with its own run ids.

    .venv/bin/python bench/hallucination.py [--variants mpo,sft,mixed] [--seeds 0,1,2] [--rounds 20]
                                            [--vision-lr-ratio 0.1] [--workdir DIR] [--set rounds.temperature=0.7 ...]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import math
import operator
import os
import platform
import random
import statistics
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mpo.config import BootstrapConfig, RunConfig, run_config
from mpo.data.loader import load_prompts, write_prompts_jsonl
from mpo.data.records import PromptRecord
from mpo.data.tasks import TASKS, make_splits
from mpo.embedded import run_embedded
from mpo.evaluation import evaluate, paired_gain
from mpo.grading.hallucination import DescriptionCheck, described_scenes, judge_description, scene_objects
from mpo.info import installed_versions
from mpo.models.corpus import task_corpus
from mpo.models.generate import Sampling, TransformersGenerator
from mpo.models.tiny import build_image_text_model
from mpo.overrides import OverrideError, parse_overrides
from mpo.services.controller.store import RunStore
from mpo.trainer.export import export_checkpoint
from mpo.trainer.sft import bootstrap
from mpo.v1 import common_pb2, controller_pb2

VARIANTS = ("mpo", "sft", "mixed", "verified")
_MPO_TERMS = {"preference": 0.8, "quality": 0.2, "generation": 1.0}
_TERMS = {"mpo": _MPO_TERMS, "sft": {"generation": 1.0}, "mixed": _MPO_TERMS, "verified": _MPO_TERMS}
#: The `verified` variant's task and the ground truth its prompts carry: the verifier reads the scene from
#: `meta`, and a non-empty answer routes a prompt to verification instead of DropoutNTP. No description
#: contains this text, so the pair builder's substring rule never drops a pair for it.
VERIFIED_TASK = "described"
VERIFIED_ANSWER = "<the scene in meta>"
DESCRIBED_VERIFIER = Path(__file__).resolve().parent / "grounded_verifier.py"
#: Held-out scenes: the rate's standard error is at most ~2.2 points at 500.
HELDOUT_SCENES = 500
DESCRIBE_TRAIN = 2000
SHAPES_TRAIN = 4000
SHAPES_HELDOUT = 200
#: The warm start on shapes and describe (~0.45 s a step of 16 on 2 cores).
WARM_START = BootstrapConfig(
    steps=800, batch_size=16, warmup_steps=20, eval_every=10**6, eval_prompts=200, pass_k=1, stability_steps=0,
    max_new_tokens=96,
)  # fmt: skip
MAX_TOKENS = 64


def base_name(vision_lr_ratio: float) -> str:
    """The base's folder: `base` at the full rate (as before the option), `base-vision<ratio>` otherwise."""
    return "base" if vision_lr_ratio == 1.0 else f"base-vision{vision_lr_ratio:g}"


def prepare(workdir: Path, vision_lr_ratio: float = 1.0) -> Path:
    """Prompts, the tiny image-text model and its warm start under `workdir` (reused); returns the base."""
    data = workdir / "data"
    if not (data / "describe-heldout.jsonl").exists():
        print(f"prompts -> {data}", flush=True)
        shapes = make_splits("shapes", seed=0, train=SHAPES_TRAIN, heldout=SHAPES_HELDOUT, out_dir=data / "shapes")
        describe = make_splits(
            "describe", seed=0, train=DESCRIBE_TRAIN, heldout=HELDOUT_SCENES, out_dir=data / "describe"
        )
        for task, splits in (("shapes", shapes), ("describe", describe)):
            for split, records in splits.items():
                write_prompts_jsonl(records, data / f"{task}-{split}.jsonl")
    if not (data / "mixed-heldout.jsonl").exists():  # the mixed variant's: both tasks, shapes first
        for split in ("train", "heldout"):
            records = [*load_prompts(data / f"shapes-{split}.jsonl").records]
            records += load_prompts(data / f"describe-{split}.jsonl").records
            write_prompts_jsonl(records, data / f"mixed-{split}.jsonl")
    if not (data / "verified-train.jsonl").exists():
        described = load_prompts(data / "describe-train.jsonl").records
        update = {"task": VERIFIED_TASK, "answer": VERIFIED_ANSWER}
        write_prompts_jsonl([r.model_copy(update=update) for r in described], data / "verified-train.jsonl")
    base = workdir / base_name(vision_lr_ratio)
    if not (base / "bootstrap.json").exists():
        model = build_image_text_model(workdir / "tiny-vl", task_corpus(["shapes", "describe"], seed=0), seed=0)
        warm_start = WARM_START.model_copy(update={"vision_lr_ratio": vision_lr_ratio})
        print(f"warm start on shapes and describe ({warm_start.steps} steps) -> {base}", flush=True)
        train = [*load_prompts(data / "shapes-train.jsonl").records]
        train += load_prompts(data / "describe-train.jsonl").records
        heldout = load_prompts(data / "shapes-heldout.jsonl").records  # the warm start's accuracy: shapes

        def demonstrate(record: PromptRecord, rng: random.Random) -> str | None:
            return TASKS[record.task].demonstration(record, rng)

        report = bootstrap(model, base, train, heldout, demonstrate, warm_start)
        (base / "bootstrap.json").write_text(json.dumps(report.summary(), indent=2))
    return base


def variant_config(
    workdir: Path, variant: str, seed: int, rounds: int, overrides: dict[str, Any], vision_lr_ratio: float = 1.0
) -> RunConfig:
    probe = "-" + hashlib.sha256(json.dumps(overrides, sort_keys=True).encode()).hexdigest()[:8] if overrides else ""
    base = base_name(vision_lr_ratio)
    run_id = f"describe-{variant}{base.removeprefix('base')}{probe}-seed{seed}"
    state = workdir / "state" / run_id
    train = {"mixed": "mixed", "verified": "verified"}.get(variant, "describe")
    heldout = "mixed" if variant == "mixed" else "describe"
    raw = {
        "run_id": run_id,
        "model": str(workdir / base),
        "data": {"train": str(workdir / "data" / f"{train}-train.jsonl"),
                 "heldout": str(workdir / "data" / f"{heldout}-heldout.jsonl")},
        "store_dir": str(workdir / "store"),
        "objective": {"terms": _TERMS[variant]},
        "rounds": {
            "rounds": rounds, "prompts_per_round": 64, "samples_per_prompt": 4, "temperature": 1.0,
            "max_pairs_per_prompt": 4, "max_tokens": MAX_TOKENS, "eval_every": rounds,
            "eval_prompts": HELDOUT_SCENES, "seed": seed,
        },
        "rollout": {"backend": "transformers", "max_model_len": 512, "weights_dir": str(state / "weights")},
        "trainer": {
            "world_size": 2, "learning_rate": 1e-4, "warmup_steps": 10, "total_steps": max(4 * rounds, 20),
            "final_lr_ratio": 0.1, "global_batch_pairs": 64, "micro_batch_pairs": 16, "max_length": 512,
            "checkpoint_dir": str(state / "checkpoints"), "publish_dir": str(state / "publish"), "seed": seed,
        },
    }  # fmt: skip
    if variant == "mixed":  # half the prompts of a round from each task; all held-out prompts evaluated
        raw["rounds"].update(task_mix={"shapes": 1, "describe": 1}, eval_prompts=SHAPES_HELDOUT + HELDOUT_SCENES)
    if variant == "verified":
        raw["reward"] = {"verifiers": {VERIFIED_TASK: f"{DESCRIBED_VERIFIER}:described"}}
    return run_config(raw, source=f"hallucination bench {variant}", overrides=overrides)


@functools.cache
def judged(model_dir: Path, heldout: Path, max_tokens: int) -> tuple[DescriptionCheck, ...]:
    """The greedy description of every held-out scene by `model_dir`, judged against its scene."""
    records = load_prompts(heldout).records[:HELDOUT_SCENES]
    texts = TransformersGenerator(model_dir).generate(records, Sampling(n=1, max_new_tokens=max_tokens))
    return tuple(judge_description(scene_objects(r.meta["scene"]), t[0]) for r, t in zip(records, texts, strict=True))


def paired_change(before: list[float], after: list[float]) -> dict[str, float]:
    differences = [b - a for a, b in zip(before, after, strict=True)]
    n = len(differences)
    mean = statistics.fmean(differences)
    error = statistics.stdev(differences) / math.sqrt(n) if n > 1 else 0.0
    return {
        "base": round(statistics.fmean(before), 4),
        "final": round(statistics.fmean(after), 4),
        "change": round(mean, 4),
        "standard_error": round(error, 4),
        "change_in_standard_errors": round(mean / error, 2) if error else None,
    }


def paired_comparison(config: RunConfig) -> dict[str, Any]:
    assert config.data is not None and config.trainer is not None
    checkpoints = config.trainer.checkpoint_dir
    latest = (checkpoints / "LATEST").read_text().strip()
    final_model = checkpoints.parent / f"exported-{latest}"
    if not (final_model / "config.json").exists():
        export_checkpoint(checkpoints / latest, final_model)
    data, max_tokens = config.data.heldout.parent, config.rounds.heldout_max_tokens
    base = judged(config.model, data / "describe-heldout.jsonl", max_tokens)
    final = judged(final_model, data / "describe-heldout.jsonl", max_tokens)
    measures = {
        "rate": lambda c: float(c.hallucinated),
        "mentions": lambda c: float(c.hallucinated_mentions),
        "recall": lambda c: c.recall,
    }
    changes = {name: paired_change([f(c) for c in base], [f(c) for c in final]) for name, f in measures.items()}
    rate = changes["rate"]
    changes["rate"]["relative_change"] = round(rate["change"] / rate["base"], 4) if rate["base"] else None
    if config.rounds.task_mix.get("shapes"):  # the mixed rounds: shapes accuracy on the same weights
        shapes = load_prompts(data / "shapes-heldout.jsonl").records[:SHAPES_HELDOUT]
        sampling = Sampling(n=1, max_new_tokens=max_tokens)
        before, after = (evaluate(TransformersGenerator(m), shapes, sampling) for m in (config.model, final_model))
        gain, error = paired_gain(before, after)
        changes["shapes_accuracy"] = {
            "base": round(before.accuracy, 4),
            "final": round(after.accuracy, 4),
            "change": round(gain, 4),
            "standard_error": round(error, 4),
            "change_in_standard_errors": round(gain / error, 2) if error else None,
            "degenerate": [round(before.degenerate, 4), round(after.degenerate, 4)],
        }
    return changes


def side_measures(scene: list[tuple[str, str]], text: str) -> dict[str, float]:
    check = judge_description(scene, text)
    return {"mentions": len(check.mentions), "false_mentions": check.hallucinated_mentions,
            "recall": check.recall, "characters": len(text)}  # fmt: skip


def pairs_from(
    store: RunStore, run_id: str, round_index: int, source: common_pb2.PairSource
) -> list[common_pb2.PreferencePair]:
    return [p for p in store.committed_pairs(run_id, round_index) if p.source == source]


def compare_sides(pairs: list[common_pb2.PreferencePair], scenes: dict[str, list[tuple[str, str]]]) -> dict[str, Any]:
    """DropoutNTP pairs with both sides judged against their scene: DropoutNTP assumes the chosen side
    (written with the image) is the more grounded one, and this measures whether it is. Each measure as
    [chosen, rejected] means, and the share of pairs whose chosen side has fewer (or more) mentions and
    false mentions than its rejected side."""
    if not pairs:
        return {"pairs": 0}
    chosen = [side_measures(scenes[p.prompt.id], p.chosen) for p in pairs]
    rejected = [side_measures(scenes[p.prompt.id], p.rejected) for p in pairs]
    summary: dict[str, Any] = {"pairs": len(pairs)}
    for name in chosen[0]:
        summary[name] = [round(statistics.fmean(side[name] for side in sides), 4) for sides in (chosen, rejected)]
    for name in ("mentions", "false_mentions"):
        for word, holds in (("fewer", operator.lt), ("more", operator.gt)):
            share = statistics.fmean(holds(c[name], r[name]) for c, r in zip(chosen, rejected, strict=True))
            summary[f"chosen_{word}_{name}"] = round(share, 4)
    return summary


def run_variant(
    workdir: Path, variant: str, seed: int, rounds: int, overrides: dict[str, Any], vision_lr_ratio: float
) -> dict[str, Any]:
    """One seed of a variant, or read back when the store has it completed."""
    config = variant_config(workdir, variant, seed, rounds, overrides, vision_lr_ratio)
    store = RunStore(config.store_dir)
    run_id = config.run_id or ""
    stored = store.get_run(run_id)
    if stored is not None and stored.state == controller_pb2.RUN_STATE_COMPLETED and stored.current_round == rounds:
        records = store.round_records(run_id)
    else:
        run_id, records = asyncio.run(run_embedded(config))
    run = store.get_run(run_id)
    assert run is not None and records, f"{run_id} produced no rounds"

    def figures(h: Any) -> dict[str, float]:
        return {"rate": round(h.rate, 4), "mentions": round(h.mentions, 4), "recall": round(h.recall, 4)}

    first_start = records[0].finished_at - records[0].timings.total
    ends = sorted({1, len(records)})  # the base's samples, and the last round's
    scenes = described_scenes(load_prompts(workdir / "data" / "describe-train.jsonl").records)
    sides = [("dropout_ntp", common_pb2.PAIR_SOURCE_DROPOUT_NTP)]
    if variant == "verified":  # correctness pairs on the same scenes
        sides.append(("correctness", common_pb2.PAIR_SOURCE_CORRECTNESS))
    return {
        "run_id": run_id,
        "controller": {
            "base": figures(run.base_eval_hallucination["describe"]),
            "final": figures(records[-1].eval_hallucination["describe"]),
            # Answers that loop or run into the token limit: a policy can stop naming shapes that way.
            "degenerate": [
                round(run.base_eval_degenerate["describe"], 4),
                round(records[-1].eval_degenerate["describe"], 4),
            ],
            # Held-out accuracy on the prompts with ground truth: shapes, in the mixed rounds.
            "accuracy": {
                task: [round(run.base_eval_accuracy[task], 4), round(accuracy, 4)]
                for task, accuracy in records[-1].eval_accuracy.items()
            },
        },
        "pairs_dropout_ntp": sum(r.labels.pairs_dropout_ntp for r in records),
        # Dropped by a mention counter (reward.task_mention_counters): the blind side named fewer things.
        "dropout_ntp_fewer_mentions": sum(r.labels.dropout_ntp_fewer_mentions for r in records),
        # Is the chosen side the more grounded one? In the first round and the last.
        **{
            f"{name}_sides": {f"round{r}": compare_sides(pairs_from(store, run_id, r, source), scenes) for r in ends}
            for name, source in sides
        },
        "pairs_correctness": sum(r.labels.pairs_correctness for r in records),
        "rounds_seconds": round(records[-1].finished_at - first_start, 1),
        "paired": paired_comparison(config),
    }


def summarize_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each measure's mean change over the seeds, with the paired error (evaluation noise) and the seeds'
    spread (standard deviation over √n: how differently the recipe trains from seed to seed)."""
    summary: dict[str, Any] = {}
    for measure in ("rate", "mentions", "recall", "shapes_accuracy"):
        if any(measure not in r["paired"] for r in runs):
            continue
        changes = [r["paired"][measure]["change"] for r in runs]
        errors = [r["paired"][measure]["standard_error"] for r in runs]
        entry = {
            "mean_change": round(statistics.fmean(changes), 4),
            "paired_standard_error": round(math.hypot(*errors) / len(runs), 4),
        }
        if len(runs) > 1:
            entry["seed_spread_standard_error"] = round(statistics.stdev(changes) / math.sqrt(len(runs)), 4)
        summary[measure] = entry
    base = statistics.fmean(r["paired"]["rate"]["base"] for r in runs)  # one base policy: equal for every seed
    if base:
        summary["rate"]["relative_change"] = round(summary["rate"]["mean_change"] / base, 4)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="mpo", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--vision-lr-ratio", type=float, default=1.0,
                        help="the warm start's image-encoder rate as a fraction of its rate, in [0, 1]")  # fmt: skip
    parser.add_argument("--workdir", type=Path, default=Path("mpo-describe"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="change the run config (dotted key, YAML value); repeatable")  # fmt: skip
    args = parser.parse_args()
    variants = args.variants.split(",")
    if unknown := sorted(set(variants) - set(VARIANTS)):
        parser.error(f"--variants: unknown {', '.join(unknown)} (choose from {', '.join(VARIANTS)})")
    try:
        overrides = parse_overrides(args.overrides)
        BootstrapConfig(vision_lr_ratio=args.vision_lr_ratio)
    except OverrideError as exc:
        parser.error(str(exc))
    except ValidationError as exc:
        parser.error(f"--vision-lr-ratio: {exc.errors()[0]['msg']}")
    started = time.perf_counter()
    base = prepare(args.workdir, args.vision_lr_ratio)
    prepare_seconds = time.perf_counter() - started
    results = {}
    for variant in variants:
        for seed in (int(s) for s in args.seeds.split(",")):
            print(f"running {variant} seed {seed} ...", flush=True)
            results[f"{variant}/seed{seed}"] = run_variant(
                args.workdir, variant, seed, args.rounds, overrides, args.vision_lr_ratio
            )
    summary = {v: summarize_seeds([r for k, r in results.items() if k.startswith(f"{v}/")]) for v in variants}
    print(
        json.dumps(
            {
                "benchmark": "hallucination",
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
                "versions": installed_versions(),
                "rounds": args.rounds,
                "overrides": overrides,
                "vision_lr_ratio": args.vision_lr_ratio,
                "base_shapes_warm_start": json.loads((base / "bootstrap.json").read_text()).get("final"),
                "prepare_seconds": round(prepare_seconds, 1),
                "summary": summary,
                "runs": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
