"""Trainer: MPO vs DPO-only step time, packed vs padded micro-batches, ZeRO-3 memory per rank (2 ranks vs
1), tokens/s, and MFU on GPU.

Runs the real trainer (Ray rank actors, DeepSpeed, the frozen reference) on the same pairs:
- MPO step vs DPO-only step (objective terms {preference: 1}) on the same batches, and the MPO step
  with micro-batches packed around the shared prompt prefix (the default) vs one padded row per
  response (`packing: false`), in this process, in the order MPO, DPO, padded, padded, DPO, MPO
  (target MPO/DPO ratio <= 1.05);
- bytes of parameters + optimizer state each rank holds with ZeRO-3 on 2 ranks vs on 1 rank;
- tokens/s (chosen + rejected response tokens trained per second) and, on CUDA, model FLOPs utilisation:
  (6·N per token of every row for the policy's forward and backward, each step, + 2·N per token once
  for the reference's forward; a row is prompt + chosen or prompt + rejected) / the card's peak bf16
  dense FLOP/s (`--peak-tflops`).
On CPU it uses the tiny default model in fp32 over gloo; `--device cuda --size 0.5b` runs the same
script on GPUs (bf16, a ~0.5B-parameter random-weight Qwen2, one GPU per rank).

    .venv/bin/python bench/trainer.py [--size tiny] [--pairs 32] [--steps 4] [--device cpu|cuda] [--once]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch

from mpo.config import ObjectiveConfig, TrainerConfig
from mpo.data.tasks import TASKS
from mpo.models.corpus import task_corpus
from mpo.models.tiny import NAMED_SIZES, build_text_model
from mpo.trainer.host import TrainerHost
from mpo.v1 import common_pb2


def workload(count: int, tag: str) -> list[common_pb2.PreferencePair]:
    """Arith prompts with their demonstration as chosen and a corrupted one as rejected; ids unique per tag."""
    rng = random.Random(0)
    pairs = []
    for record in TASKS["arith"].generate(count, 11, None):
        chosen = TASKS["arith"].demonstration(record, rng) or ""
        wrong = str(int(record.answer or 0) + 1)
        prompt = common_pb2.Prompt(id=record.id, question=record.question, task="arith", answer=record.answer)
        pairs.append(
            common_pb2.PreferencePair(
                id=f"{tag}-{record.id}",
                prompt=prompt,
                chosen=chosen,
                rejected=chosen.rsplit("Final answer:", 1)[0] + f"Final answer: {wrong}",
                source=common_pb2.PAIR_SOURCE_CORRECTNESS,
            )
        )
    return pairs


async def measure(config: TrainerConfig, args: argparse.Namespace) -> dict[str, object]:
    host = TrainerHost(config)
    await host.start()
    try:
        await host.train(workload(args.pairs, "warm-up"), 1, 1)  # first steps allocate and compile
        seconds, tokens, steps, flop_tokens, reference = [], 0, 0, 0, 0.0
        for repeat in range(args.repeats):
            pairs = workload(args.pairs, f"r{repeat}")
            rows = sum(2 * len(p.prompt_ids) + p.response_tokens for p in host.encoder.encode_all(pairs))
            started = time.perf_counter()
            outcome = await host.train(pairs, 2 + repeat, args.steps)
            seconds.append(time.perf_counter() - started)
            tokens += sum(int(s["tokens"]) for s in outcome.steps)
            steps += len(outcome.steps)
            reference += outcome.reference_seconds
            # 6N per token of every row for the policy's forward + backward each step, 2N once for the reference.
            flop_tokens += 6 * rows * args.steps + 2 * rows
        memory = (await host.group.call("memory"))[0]
    finally:
        await host.stop()
    per_call = statistics.median(seconds)
    return {
        "step_s": per_call / args.steps,
        "tokens_per_s": tokens / sum(seconds),
        "flops_per_parameter_per_s": flop_tokens / sum(seconds),
        "memory_per_rank_bytes": memory,
        "steps": steps,
        "reference_share": reference / sum(seconds),
    }


async def main_async(args: argparse.Namespace, model_dir: Path, work: Path) -> dict[str, object]:
    cuda = args.device == "cuda"
    base = {
        "model": model_dir,
        "num_cpus_per_rank": 0 if cuda else 1,
        "num_gpus_per_rank": 1 if cuda else 0,
        "global_batch_pairs": args.pairs,
        "micro_batch_pairs": args.micro,
        "learning_rate": 1e-5,
        "warmup_steps": 0,
        "max_length": 512,
        "resume": False,
    }

    def config(
        name: str, world_size: int, terms: dict[str, float] | None = None, packing: bool = True
    ) -> TrainerConfig:
        objective = ObjectiveConfig(terms=terms) if terms else ObjectiveConfig()
        return TrainerConfig(
            **base,
            world_size=world_size,
            objective=objective,
            packing=packing,
            checkpoint_dir=work / name / "checkpoints",
        )

    ranks = args.ranks
    # A, B, C, C, B, A: whichever trainer runs first or last gets no systematic edge (e.g. the previous
    # group's processes still exiting); each figure is the mean of its two runs. `--once`: A, B, C, for a
    # smoke run that only checks that every figure comes out.
    runs: dict[str, list[dict[str, Any]]] = {"mpo": [], "dpo": [], "padded": []}
    order = ("mpo", "dpo", "padded") if args.once else ("mpo", "dpo", "padded", "padded", "dpo", "mpo")
    for label in order:
        terms = {"preference": 1.0} if label == "dpo" else None
        name = f"{label}-{len(runs[label])}"
        runs[label].append(await measure(config(name, ranks, terms, packing=label != "padded"), args))
    mpo, dpo, padded = ({**r[0], "step_s": statistics.fmean(x["step_s"] for x in r)} for r in runs.values())
    single = mpo if ranks == 1 else await measure(config("one-rank", 1), args)
    parameters = sum(p.numel() for p in _model(model_dir).parameters())
    result: dict[str, object] = {
        "ranks": ranks,
        "step_s": {
            "mpo": round(mpo["step_s"], 4),
            "dpo_only": round(dpo["step_s"], 4),
            "mpo_padded": round(padded["step_s"], 4),
        },
        "ratio_mpo_over_dpo": round(mpo["step_s"] / dpo["step_s"], 3),
        "speedup_packed_over_padded": round(padded["step_s"] / mpo["step_s"], 3),
        "tokens_per_s": round(mpo["tokens_per_s"], 1),
        # Reference log-probs, once per pair: their share of a call; per epoch it would be ~steps × this.
        "reference_share_of_train_call": round(mpo["reference_share"], 3),
        "memory_per_rank_bytes": {
            f"{ranks}_ranks": mpo["memory_per_rank_bytes"],
            "1_rank": single["memory_per_rank_bytes"],
        },
        "ratio_memory_per_rank_vs_1_rank": round(
            sum(mpo["memory_per_rank_bytes"].values()) / sum(single["memory_per_rank_bytes"].values()), 3
        ),
        "parameters": parameters,
    }
    if cuda:
        flops = parameters * mpo["flops_per_parameter_per_s"]
        result["mfu"] = round(flops / (args.peak_tflops * 1e12 * ranks), 4)
        result["device"] = torch.cuda.get_device_name(0)
    return result


def _model(model_dir: Path) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=sorted(NAMED_SIZES))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=16, help="pairs per call (one optimizer step's batch)")
    parser.add_argument("--micro", type=int, default=4, help="pairs per micro-batch")
    parser.add_argument("--steps", type=int, default=3, help="epochs over the pairs per timed call (steps)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--once", action="store_true", help="each trainer once, not in ABCCBA order (smoke runs)")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="peak bf16 dense TFLOP/s (H100 SXM: 989)")
    args = parser.parse_args()
    cpus = os.cpu_count() or 2
    ray.init(num_cpus=max(cpus, args.ranks), include_dashboard=False, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            model_dir = build_text_model(work / "model", task_corpus(["arith"], seed=0), NAMED_SIZES[args.size], seed=0)
            result = asyncio.run(main_async(args, model_dir, work))
    finally:
        ray.shutdown()
    print(
        json.dumps(
            {
                "benchmark": "trainer",
                "machine": f"{platform.machine()}, {cpus} cores, torch threads {torch.get_num_threads()}",
                "model": args.size,
                "workload": {"pairs": args.pairs, "micro": args.micro, "steps_per_call": args.steps},
                "result": result,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
