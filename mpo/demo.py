"""`mpo demo`: the embedded online-MPO run a new user starts with, from nothing to a better policy.

Steps, each skipped when its output is already in the work directory (a second demo starts at once):
the task's prompts → a tiny model with its own tokenizer (a Qwen2 for `arith`, a LLaVA-style image-text
model for `shapes`) → the supervised warm start (the base policy) → the online rounds on a local Ray with
all services. The run config is written beside them, so the same run can be repeated, changed and resumed
with `mpo run`. It closes with what the rounds gained on the held-out split, read back from the run store,
and where the pairs, metrics and dashboard are. Each task's recipe (`RECIPES`) is what docs/results.md
measured for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from tqdm import tqdm

from mpo.config import BootstrapConfig, RunConfig, format_validation_error
from mpo.data.loader import load_prompts, write_prompts_jsonl
from mpo.data.tasks import TASKS, make_splits
from mpo.embedded import round_line, run_embedded
from mpo.models.corpus import task_corpus
from mpo.models.tiny import build_image_text_model, build_text_model
from mpo.services.controller.store import RunStore
from mpo.trainer.sft import bootstrap

log = logging.getLogger(__name__)

#: A recipe's run settings for (state dir, seed, rounds, mode, held-out prompts, train prompts): the
#: objective, rounds, reward, rollout and trainer sections of the run config.
Settings = Callable[[Path, int, int, str, int, int], dict[str, Any]]


@dataclass(frozen=True)
class DemoRecipe:
    """What `mpo demo --task T` builds and runs; every number is a measured choice (docs/results.md)."""

    task: str
    run_id_prefix: str
    workdir: Path
    train_prompts: int
    heldout_prompts: int
    rounds: int
    warm_start: BootstrapConfig
    warm_step_seconds: float  # measured on 2 cores, for the printed estimate
    build_model: Callable[[Path, list[str]], Path]
    settings: Settings


def _arith_settings(state: Path, seed: int, rounds: int, mode: str, heldout: int, train: int) -> dict[str, Any]:
    """arith's recipe, and why (docs/results.md has the measurements): many prompts per round and few pairs
    per prompt (128 prompts × 8 samples, at most 4 pairs each) spread each optimizer step over ~19
    prompts instead of ~8; with sampling at temperature 0.7, which keeps the pairs near what greedy
    decoding writes, that took seed 0 from +1.7 to +2.85 points; the arith step check keeps right answers reached
    through a wrong derivation out of the chosen side (15–25% of them: otherwise the SFT term teaches
    the wrong steps); one epoch per round keeps the data on-policy. The peak learning rate is the warm
    start's final rate (1e-4), reached over 30 steps (~12 rounds) and decayed over the run, with the
    SFT term at half the paper's weight, so the SFT push (rate × weight) stays what it was at 5e-5 and
    the preference and quality terms push twice as hard: over 60 rounds on the 2400-step base that
    gained +5.6 ± 0.5 points over three seeds, against +4.8 ± 0.5 at 5e-5 with the paper's weights
    (on the weaker 1200-step base a higher rate first cost accuracy and won it back slowly; 60 rounds
    leave time to win it back).
    """
    return {
        # The paper's weights, but half the generation weight: see the learning rate.
        "objective": {"terms": {"preference": 0.8, "quality": 0.2, "generation": 0.5}},
        "rounds": {
            "rounds": rounds,
            "mode": mode,
            "prompts_per_round": min(128, train),  # a smaller prompt set (--train-prompts) caps it
            "samples_per_prompt": 8,
            "temperature": 0.7,
            "max_pairs_per_prompt": 4,
            "max_tokens": 96,  # as in the warm start's evaluation: longer chains must not be cut off
            "eval_every": max(rounds // 2, 1),  # halfway and at the end: each costs ~20 s of the budget
            "eval_prompts": heldout,
            "seed": seed,
        },
        "reward": {"task_step_checks": {"arith": "arith_steps"}},
        "rollout": {
            "backend": "vllm",
            "dtype": "float32",
            "enforce_eager": True,
            "max_model_len": 256,
            "kv_cache_bytes": 64 * 2**20,
            "weights_dir": str(state / "weights"),
        },
        "trainer": {
            "world_size": 2,
            "learning_rate": 1e-4,
            "warmup_steps": 30,
            "total_steps": max(3 * rounds, 20),  # measured: ~2.2 steps per round, so the rate ends near 30%
            "final_lr_ratio": 0.1,
            "global_batch_pairs": 64,
            "micro_batch_pairs": 8,
            "max_length": 256,
            "checkpoint_dir": str(state / "checkpoints"),
            "publish_dir": str(state / "publish"),
            "seed": seed,
        },
    }


def _shapes_settings(state: Path, seed: int, rounds: int, mode: str, heldout: int, train: int) -> dict[str, Any]:
    """shapes' recipe: image-text generation runs on the transformers backend (vLLM's CPU build does not
    serve this LLaVA-style model here), so a round samples fewer answers than arith's (64 prompts × 8),
    and generation is ~70% of a round. The paper's weights at the warm start's final rate (1e-4); the
    base and the last round are evaluated (each 2,000-image evaluation costs about a round). Measured
    (docs/results.md): 20 rounds gain +3.4 points over three seeds in ~22 minutes from nothing, short of
    the +5 target."""
    return {
        "objective": {"terms": {"preference": 0.8, "quality": 0.2, "generation": 1.0}},
        "rounds": {
            "rounds": rounds,
            "mode": mode,
            "prompts_per_round": min(64, train),
            "samples_per_prompt": 8,
            "temperature": 1.0,
            "max_pairs_per_prompt": 4,
            "max_tokens": 96,
            "eval_every": rounds,  # the base and the last round: a 2,000-image evaluation is the round's cost
            "eval_prompts": heldout,
            "seed": seed,
        },
        "rollout": {
            "backend": "transformers",
            "max_model_len": 512,
            "weights_dir": str(state / "weights"),
        },
        "trainer": {
            "world_size": 2,
            "learning_rate": 1e-4,
            "warmup_steps": 10,
            "total_steps": max(3 * rounds, 20),
            "final_lr_ratio": 0.1,
            "global_batch_pairs": 64,
            "micro_batch_pairs": 16,
            "max_length": 512,
            "checkpoint_dir": str(state / "checkpoints"),
            "publish_dir": str(state / "publish"),
            "seed": seed,
        },
    }


RECIPES: dict[str, DemoRecipe] = {
    "arith": DemoRecipe(
        task="arith",
        run_id_prefix="demo",
        workdir=Path("mpo-demo"),
        # Held-out prompts: the evaluation's standard error is about 1.1 points at 40% accuracy.
        train_prompts=5000,
        heldout_prompts=2000,
        rounds=60,
        # The base: twice the default warm start, without the extra checks (curve points, pass@k,
        # stability) that `bench/bootstrap_accuracy.py` measures once; ~6 minutes on 2 cores with packed
        # batches. Why twice: what the online rounds gain follows how good the base is, up to a point
        # (docs/results.md: +2.7 points over three seeds from the 1200-step base, 26% greedy on the
        # held-out split, +4.2 from the 2400-step one, 48%; a 3600-step base, 68%, gained less than the
        # 2400-step one on the same seed).
        warm_start=BootstrapConfig(steps=2400, eval_every=10_000, eval_prompts=500, pass_k=1, stability_steps=0),
        warm_step_seconds=0.15,
        build_model=lambda out, corpus: build_text_model(out, corpus, seed=0),
        settings=_arith_settings,
    ),
    "shapes": DemoRecipe(
        task="shapes",
        run_id_prefix="demo-shapes",
        workdir=Path("mpo-demo-shapes"),
        train_prompts=5000,
        heldout_prompts=2000,
        rounds=20,
        warm_start=BootstrapConfig(
            steps=800,
            batch_size=16,
            warmup_steps=20,
            eval_every=10_000,
            eval_prompts=200,
            pass_k=1,
            stability_steps=0,
        ),
        warm_step_seconds=0.45,
        build_model=lambda out, corpus: build_image_text_model(out, corpus, seed=0),
        settings=_shapes_settings,
    ),
}


class DemoWorkdirError(ValueError):
    """The work directory holds another task's demo; nothing was changed."""


def demo_run_config(
    workdir: Path,
    *,
    seed: int,
    rounds: int,
    mode: str,
    recipe: DemoRecipe = RECIPES["arith"],
    heldout: int | None = None,
    train: int | None = None,
) -> dict[str, Any]:
    """The demo's run config (a plain mapping: it is also written to `demo-*.yaml`); `heldout` and `train`
    are the prompt counts (default: the recipe's)."""
    state = workdir / "state" / f"seed{seed}"
    heldout = recipe.heldout_prompts if heldout is None else heldout
    train = recipe.train_prompts if train is None else train
    return {
        "run_id": f"{recipe.run_id_prefix}-seed{seed}",
        "model": str(workdir / "base"),
        "data": {"train": str(workdir / "data" / "train.jsonl"), "heldout": str(workdir / "data" / "heldout.jsonl")},
        "store_dir": str(workdir / "store"),
        **recipe.settings(state, seed, rounds, mode, heldout, train),
    }


def _check_workdir_task(recipe: DemoRecipe, heldout_file: Path) -> None:
    """Refuse to reuse prompts, model and base that another task's demo built in the same directory."""
    records = load_prompts(heldout_file).records
    found = {record.task for record in records}
    if found != {recipe.task}:
        raise DemoWorkdirError(
            f"{heldout_file.parent.parent} holds a demo of task {', '.join(sorted(found))}, not {recipe.task}: "
            "pass another --workdir (or remove that one)"
        )


def prepare(
    workdir: Path,
    *,
    recipe: DemoRecipe = RECIPES["arith"],
    train_prompts: int | None = None,
    heldout_prompts: int | None = None,
    bootstrap_steps: int | None = None,
    say: Callable[[str], None] = print,
) -> Path:
    """Data, tiny model and base policy under `workdir` (reused when present); returns the base's dir.

    `bootstrap_steps` overrides the warm start's length; it is validated before anything is built
    (pydantic `ValidationError`), as is the task of what the directory already holds (`DemoWorkdirError`).
    """
    config = recipe.warm_start
    if bootstrap_steps is not None:
        config = BootstrapConfig.model_validate({**config.model_dump(), "steps": bootstrap_steps})
    task = recipe.task
    train_prompts = recipe.train_prompts if train_prompts is None else train_prompts
    heldout_prompts = recipe.heldout_prompts if heldout_prompts is None else heldout_prompts
    data = workdir / "data"
    if not (data / "heldout.jsonl").exists():
        say(f"[1/3] {task} prompts: {train_prompts} train, {heldout_prompts} held out -> {data}")
        splits = make_splits(task, seed=0, train=train_prompts, heldout=heldout_prompts, out_dir=data)
        for split in ("train", "heldout"):
            write_prompts_jsonl(splits[split], data / f"{split}.jsonl")
    else:
        _check_workdir_task(recipe, data / "heldout.jsonl")
        say(f"[1/3] reusing the prompts in {data}")
    model = workdir / "tiny-model"
    kind = "image-text" if TASKS[task].has_images else "text"
    if not (model / "config.json").exists():
        say(f"[2/3] building the tiny {kind} model -> {model}")
        recipe.build_model(model, task_corpus([task], seed=0))
    else:
        say(f"[2/3] reusing the tiny model in {model}")
    base = workdir / "base"
    if not (base / "bootstrap.json").exists():
        minutes = max(1, round(config.steps * recipe.warm_step_seconds / 60))
        say(f"[3/3] warm start of the base policy ({config.steps} steps, ~{minutes} min on 2 cores) -> {base}")
        train = load_prompts(data / "train.jsonl").records
        heldout = load_prompts(data / "heldout.jsonl").records
        report = bootstrap(model, base, train, heldout, TASKS[task].demonstration, config)
        (base / "bootstrap.json").write_text(json.dumps(report.summary(), indent=2))
    else:
        say(f"[3/3] reusing the base policy in {base}")
    return base


def write_config(
    workdir: Path, recipe: DemoRecipe, *, seed: int, rounds: int, mode: str, heldout: int
) -> tuple[Path, RunConfig]:
    train = len(load_prompts(workdir / "data" / "train.jsonl").records)
    raw = demo_run_config(workdir, seed=seed, rounds=rounds, mode=mode, recipe=recipe, heldout=heldout, train=train)
    path = workdir / f"{raw['run_id']}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path, RunConfig.model_validate(raw)


def elapsed(started: float) -> str:
    return time.strftime("%M:%S", time.gmtime(time.perf_counter() - started))


class WarmStartError(ValueError):
    """`--bootstrap-steps` asks for a warm start that BootstrapConfig refuses; nothing was built yet."""


def run_demo(
    *,
    task: str = "arith",
    workdir: Path | None = None,
    rounds: int | None = None,
    seed: int = 0,
    mode: str = "sync",
    train_prompts: int | None = None,
    heldout_prompts: int | None = None,
    bootstrap_steps: int | None = None,
) -> None:
    """`mpo demo`: prepare (or reuse) everything in `workdir`, run the rounds with a progress bar, then
    print what the rounds gained on the held-out split and where to look next. Unset arguments take the
    task's recipe (`RECIPES`)."""
    recipe = RECIPES[task]
    workdir = recipe.workdir if workdir is None else workdir
    rounds = recipe.rounds if rounds is None else rounds
    heldout_prompts = recipe.heldout_prompts if heldout_prompts is None else heldout_prompts
    started = time.perf_counter()
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        prepare(
            workdir,
            recipe=recipe,
            train_prompts=train_prompts,
            heldout_prompts=heldout_prompts,
            bootstrap_steps=bootstrap_steps,
        )
    except ValidationError as exc:
        raise WarmStartError(format_validation_error(exc)) from exc
    path, config = write_config(workdir, recipe, seed=seed, rounds=rounds, mode=mode, heldout=heldout_prompts)
    print(f"[{elapsed(started)}] online rounds ({config.rounds.mode}) with the config {path}", flush=True)
    run_id = _run_rounds(config, rounds, started)
    store = RunStore(config.store_dir, pairs_dir=config.pairs_dir)
    for line in [*held_out_gains(store, run_id), *next_steps(store, config, run_id, rounds)]:
        print(line)
    print(f"[{elapsed(started)}] done")


def _run_rounds(config: RunConfig, rounds: int, started: float) -> str:
    """The online rounds on a local Ray, one table row per round above a progress bar; returns the run id."""
    with tqdm(total=rounds, desc="rounds", unit="round") as bar:

        def show(record: Any) -> None:
            bar.write(f"[{elapsed(started)}] {round_line(record)}")
            bar.update(1)

        def dashboard(url: str) -> None:
            bar.write(f"[{elapsed(started)}] dashboard (live while the rounds run): {url}#/runs/{config.run_id}")

        run_id, _ = asyncio.run(run_embedded(config, on_round=show, on_dashboard=dashboard))
    return run_id


def held_out_gains(store: RunStore, run_id: str) -> list[str]:
    """One line per task: the base policy's held-out accuracy, the last evaluated round's, and the gain in
    points; none when the run has no base evaluation or no evaluated round."""
    run = store.get_run(run_id)
    evaluated = [record for record in store.round_records(run_id) if record.eval_accuracy]
    if run is None or not run.base_eval_accuracy or not evaluated:
        return []
    base, last = run.base_eval_accuracy, evaluated[-1]
    lines = []
    for task, accuracy in sorted(last.eval_accuracy.items()):
        before = base.get(task, 0.0)
        gain = 100 * (accuracy - before)
        lines.append(f"held-out {task}: base {before:.1%} -> round {last.round} {accuracy:.1%} ({gain:+.1f} points)")
    return lines


def next_steps(store: RunStore, config: RunConfig, run_id: str, rounds: int) -> list[str]:
    """Where the run's pairs, metrics and dashboard are, and how to run more rounds of it."""
    run_dir = config.store_dir / "runs" / run_id
    return [
        f"pairs (Parquet, TRL DPO columns): {store.pairs_folder(run_id)}",
        f"metrics: tensorboard --logdir {run_dir / 'tensorboard'}",
        f"dashboard: mpo dashboard --store-dir {config.store_dir} (then open http://127.0.0.1:8265/#/runs/{run_id})",
        f"more rounds: mpo run --resume {run_id} --store-dir {config.store_dir} --rounds {rounds + 5}",
    ]
