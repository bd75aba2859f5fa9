"""Warm-start throughput with batches grouped by length against ungrouped batches, in one process.

Both arms run `bootstrap` on the demo's arith data and tiny model for the same number of steps, in
alternation (the machine's noise hits both), and report seconds per step, the share of padded tokens
and the speed-up. Accuracy after a full warm start is `bench/bootstrap_accuracy.py --length-groups G`.
Prints JSON.

    .venv/bin/python bench/warm_start_speed.py [--steps 100] [--groups 16] [--repeats 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import statistics
import tempfile
from pathlib import Path

import torch

from mpo.config import BootstrapConfig
from mpo.data.loader import load_prompts
from mpo.data.tasks import TASKS
from mpo.demo import TASK, prepare_inputs
from mpo.models.generate import TransformersGenerator
from mpo.trainer.sft import DemonstrationBatcher, bootstrap, demonstration_groups


def padded_share(model_dir: Path, train: list, groups: int, batch_size: int, batches: int = 50) -> float:
    """Fraction of a batch's positions that are padding, over the first `batches` batches."""
    batcher = DemonstrationBatcher(TransformersGenerator(model_dir))
    draw = demonstration_groups(train, TASKS[TASK].demonstration, random.Random(0), batch_size, groups)
    real = total = 0
    for examples in itertools.islice(itertools.chain.from_iterable(draw), batches):
        mask = batcher.batch(examples)["attention_mask"]
        real, total = real + int(mask.sum()), total + mask.numel()
    return 1 - real / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="warm-start steps per arm and repeat")
    parser.add_argument("--groups", type=int, default=16, help="BootstrapConfig.length_groups of the grouped arm")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="reuse the demo's data and tiny model here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        data, model_dir = prepare_inputs(workdir, say=lambda _: None)
        train = load_prompts(data / "train.jsonl").records
        heldout = load_prompts(data / "heldout.jsonl").records[:4]
        seconds: dict[int, list[float]] = {1: [], args.groups: []}
        for _, groups in itertools.product(range(args.repeats), seconds):
            config = BootstrapConfig(
                steps=args.steps, length_groups=groups, eval_every=10**6, eval_prompts=4, pass_k=1,
                stability_steps=0, max_new_tokens=8,
            )  # fmt: skip
            report = bootstrap(
                model_dir, Path(tmp) / f"base-{groups}", train, heldout, TASKS[TASK].demonstration, config,
                progress=False,
            )  # fmt: skip
            seconds[groups].append(report.seconds / args.steps)
        per_step = {groups: statistics.median(values) for groups, values in seconds.items()}
        batch_size = BootstrapConfig().batch_size
        result = {
            "benchmark": "warm_start_speed",
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
            "steps": args.steps,
            "repeats": args.repeats,
            "batch_size": batch_size,
            "arms": {
                f"length_groups={groups}": {
                    "seconds_per_step": round(per_step[groups], 4),
                    "padded_share": round(padded_share(model_dir, train, groups, batch_size), 3),
                }
                for groups in per_step
            },
            "speedup_grouped_over_plain": round(per_step[1] / per_step[args.groups], 3),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
