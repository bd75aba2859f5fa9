"""Warm-start step time: shared-prefix packed batches against right-padded ones, in one process.

Both arms train the demo's tiny arith model (two copies from the same initialisation) on the same
demonstration batches, one step each in alternation so the machine's noise hits both, and report
seconds per optimizer step, positions per step and the speed-up. The packed arm is what `mpo
bootstrap` runs for text models; its loss and gradients equal the padded arm's (tests/test_packing.py).
Prints JSON.

    .venv/bin/python bench/warm_start_speed.py [--steps 60] [--warmup 5]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mpo.config import BootstrapConfig
from mpo.data.tasks import TASKS
from mpo.models.corpus import task_corpus
from mpo.models.demonstrations import DemonstrationBatcher
from mpo.models.generate import TransformersGenerator
from mpo.models.tiny import build_text_model
from mpo.trainer.sft import sft_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="timed steps per arm")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per arm first")
    args = parser.parse_args()
    config = BootstrapConfig()
    task = TASKS["arith"]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_text_model(Path(tmp) / "tiny-model", task_corpus(["arith"], seed=0), seed=0)
        generator = TransformersGenerator(model_dir)
        batcher = DemonstrationBatcher(generator)
        generator.model.train()
        arms = {"padded": generator.model, "packed": copy.deepcopy(generator.model)}
        optimizers = {name: torch.optim.AdamW(arm.parameters(), lr=config.learning_rate) for name, arm in arms.items()}
        build = {"padded": batcher.batch, "packed": batcher.loss_batch}
        records = task.generate(5000, 0, None)
        rng = random.Random(0)
        seconds: dict[str, list[float]] = {name: [] for name in arms}
        positions: dict[str, list[int]] = {name: [] for name in arms}
        for step in range(args.warmup + args.steps):
            examples = [(record, task.demonstration(record, rng)) for record in rng.sample(records, config.batch_size)]
            for name, model in arms.items():
                batch = build[name](examples)
                started = time.perf_counter()
                sft_step(model, optimizers[name], batch, config.max_grad_norm)
                elapsed = time.perf_counter() - started
                if step >= args.warmup:
                    seconds[name].append(elapsed)
                    positions[name].append(batch["input_ids"].numel())
    per_step = {name: statistics.median(values) for name, values in seconds.items()}
    result = {
        "benchmark": "warm_start_speed",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        "batch_size": config.batch_size,
        "steps": args.steps,
        "arms": {
            name: {"seconds_per_step": round(per_step[name], 4), "positions_per_step": statistics.mean(positions[name])}
            for name in arms
        },
        "speedup_packed_over_padded": round(per_step["padded"] / per_step["packed"], 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
