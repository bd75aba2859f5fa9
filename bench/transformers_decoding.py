"""The transformers rollout backend on image questions: a static KV cache against the default dynamic one.

Image-text policies decode on the transformers backend on CPU (docs/design.md §5), and that is most of a
`shapes` round (docs/results.md). The dynamic cache grows, and so copies, every layer's keys and values at
each new token; `rollout.transformers_kv_cache: static` allocates them once. Both engines are the product's
(`create_engine`) on the same model and `shapes` prompts, with the same sampling seed; they alternate
(ABBA…) in this process, so the ratio is taken under the same machine load. It also reports whether the
two drew the same tokens. A random-weight model rarely stops early, so every row decodes `--max-tokens`:
this measures the cost per token, not an answer-length mix.

    .venv/bin/python bench/transformers_decoding.py [--prompts 64] [--n 8] [--max-tokens 48] [--repeats 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mpo.config import RolloutConfig
from mpo.data.tasks import TASKS
from mpo.models.corpus import task_corpus
from mpo.models.tiny import build_image_text_model
from mpo.prompts import PromptRenderer
from mpo.services.controller.loop import to_prompt
from mpo.services.rollout.engines import create_engine
from mpo.services.rollout.engines.base import SamplingSpec

CACHES = ("dynamic", "static")


async def main_async(args: argparse.Namespace, work: Path) -> dict[str, object]:
    model = build_image_text_model(work / "model", task_corpus(["shapes"], per_task=500), seed=0)
    prompts = [to_prompt(record) for record in TASKS["shapes"].generate(args.prompts, 7, work / "images")]
    engines = {cache: create_engine(RolloutConfig(model=model, transformers_kv_cache=cache)) for cache in CACHES}
    renderer = PromptRenderer(model, max_model_len=engines["dynamic"].description.max_model_len, readable_roots=[])
    spec = SamplingSpec(n=args.n, temperature=1.0, top_k=50, max_tokens=args.max_tokens, seed=1)
    inputs = [renderer.render(p, "p", max_tokens=spec.max_tokens) for p in prompts]
    for engine in engines.values():
        await engine.generate(inputs[:2], spec)  # warm-up
    seconds: dict[str, list[float]] = {cache: [] for cache in CACHES}
    tokens: dict[str, list[list[int]]] = {}
    for repeat in range(args.repeats):
        for cache in CACHES if repeat % 2 == 0 else reversed(CACHES):
            started = time.perf_counter()
            outputs = await engines[cache].generate(inputs, spec)
            seconds[cache].append(time.perf_counter() - started)
            tokens[cache] = [c.token_ids for row in outputs for c in row]
    generated = sum(len(ids) for ids in tokens["dynamic"])
    tokens_per_s = {cache: generated / statistics.median(seconds[cache]) for cache in CACHES}
    return {
        "benchmark": "transformers_decoding",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}",
        "workload": {"prompts": args.prompts, "n": args.n, "max_tokens": args.max_tokens, "tokens": generated},
        "seconds": {cache: [round(s, 2) for s in seconds[cache]] for cache in CACHES},
        "tokens_per_s": {cache: round(rate, 1) for cache, rate in tokens_per_s.items()},
        "ratio_static_over_dynamic": round(tokens_per_s["static"] / tokens_per_s["dynamic"], 3),
        "same_tokens": tokens["static"] == tokens["dynamic"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--n", type=int, default=8, help="samples per prompt (the shapes recipe's)")
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2, help="timed batches per cache, alternating")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a rollout replica on 1 Ray CPU: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as work:
        print(json.dumps(asyncio.run(main_async(args, Path(work))), indent=2))


if __name__ == "__main__":
    main()
