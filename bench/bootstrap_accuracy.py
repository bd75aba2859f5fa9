"""Base-policy quality after `mpo bootstrap`, per built-in task (issue target: greedy 20–60%).

For arith (text model) and shapes (image-text model): generate data, build the tiny model, bootstrap
it with the default `BootstrapConfig`, and report held-out greedy accuracy with its standard error,
pass@k at temperature 1.0 (headroom for online learning: pass@k / greedy), the accuracy curve, the
stability check (accuracy change after more steps of the same training) and wall time on this
machine. Prints JSON.

    .venv/bin/python bench/bootstrap_accuracy.py [--tasks arith,shapes] [--heldout 2000] [--steps N] [--ema-decay D]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

import torch

from mpo.config import BootstrapConfig
from mpo.data.tasks import TASKS, make_splits
from mpo.info import installed_versions
from mpo.models.corpus import task_corpus
from mpo.models.tiny import build_image_text_model, build_text_model
from mpo.trainer.sft import bootstrap


def bootstrap_config(args: argparse.Namespace) -> BootstrapConfig:
    """The defaults, with what the command line overrides."""
    overrides: dict[str, float] = {"steps": args.steps} if args.steps else {}
    if args.ema_decay is not None:
        overrides["ema_decay"] = args.ema_decay
    return BootstrapConfig(eval_prompts=args.heldout, seed=args.seed, **overrides)


def run_task(name: str, workdir: Path, args: argparse.Namespace) -> dict[str, object]:
    task = TASKS[name]
    splits = make_splits(name, seed=args.seed, train=args.train, heldout=args.heldout, out_dir=workdir / name)
    corpus = task_corpus([name], seed=args.seed)
    build = build_image_text_model if task.has_images else build_text_model
    model_dir = build(workdir / f"{name}-model", corpus, seed=args.seed)
    config = bootstrap_config(args)
    started = time.perf_counter()
    report = bootstrap(
        model_dir, workdir / f"{name}-base", splits["train"], splits["heldout"], task.demonstration, config
    )
    summary = report.summary()
    greedy = report.final.accuracy if report.final else 0.0
    pass_k = report.pass_at_k.pass_at_k if report.pass_at_k else 0.0
    return {
        "model": "image-text (LLaVA-style)" if task.has_images else "text (Qwen2)",
        "ema_decay": summary["ema_decay"],
        "train_prompts": len(splits["train"]),
        "heldout_prompts": report.final.prompts if report.final else 0,
        "greedy_accuracy": round(greedy, 4),
        "greedy_standard_error": round(report.final.standard_error, 4) if report.final else None,
        "in_target_20_60": 0.20 <= greedy <= 0.60,
        f"pass_at_{config.pass_k}": round(pass_k, 4),
        "headroom_ratio_pass_over_greedy": round(pass_k / greedy, 3) if greedy else None,
        "stability_delta_points": summary["stability_delta_points"],
        "stable_under_3_points": summary["stability_delta_points"] is not None
        and abs(summary["stability_delta_points"]) < 3,
        "curve": summary["curve"],
        "bootstrap_train_seconds": summary["train_seconds"],
        "total_seconds_incl_evals": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="arith,shapes")
    parser.add_argument("--train", type=int, default=5000)
    parser.add_argument("--heldout", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=None, help="override BootstrapConfig.steps")
    parser.add_argument("--ema-decay", type=float, default=None, help="override the per-task BootstrapConfig.ema_decay")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    random.seed(args.seed)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.tasks.split(","):
            results[name] = run_task(name, Path(tmp), args)
    print(
        json.dumps(
            {
                "benchmark": "bootstrap_accuracy",
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
                "versions": installed_versions(),
                "config": bootstrap_config(args).model_dump(),
                "tasks": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
