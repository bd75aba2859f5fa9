"""Packed vs padded preference micro-batches at the model: forward + backward of per-sequence log-probs.

`bench/trainer.py` compares the two layouts through the whole trainer (Ray ranks, DeepSpeed ZeRO-3);
this is the model-level half, without Ray or DeepSpeed, so it also runs where those cannot be installed
(the lent GPU machine: `--device cuda --size 0.5b`, bf16, SDPA attention). The micro-batches are
synthetic but shaped like the trainer's: a prompt prefix every pair shares (instruction and chat
scaffolding), each pair's own question, then its chosen and its rejected response, laid out as the
trainer's `pair_batch` lays them out (`pack_shared_prefix`, or `collate` with `packing: false`). Both
arms get the same batches, one after the other, so the machine's noise hits both. Also reports the
largest difference between the two arms' per-sequence log-probs (float rounding only;
tests/test_packing.py checks equality on CPU).
Prints JSON.

    .venv/bin/python bench/packing_speed.py [--size tiny] [--device cpu] [--pairs 8] [--prefix 40]
                                            [--question 10,25] [--response 20,50] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time

import torch
from transformers import Qwen2ForCausalLM

from mpo.models.logprobs import collate, model_logprobs
from mpo.models.packing import pack_shared_prefix
from mpo.models.tiny import NAMED_SIZES, text_config


def span(text: str) -> tuple[int, int]:
    low, high = (int(part) for part in text.split(","))
    if not 1 <= low <= high:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH with 1 <= LOW <= HIGH, got {text!r}")
    return low, high


def micro_batch(rng: random.Random, args: argparse.Namespace, vocab: int) -> tuple[list[torch.Tensor], list[int]]:
    """Rows [chosen_0 … chosen_m−1, rejected_0 … rejected_m−1] and their prompt lengths, as the trainer
    lays out a micro-batch of m pairs."""

    def tokens(count: int) -> list[int]:
        return [rng.randrange(1, vocab) for _ in range(count)]

    prefix = tokens(args.prefix)
    prompts = [prefix + tokens(rng.randint(*args.question)) for _ in range(args.pairs)]
    chosen = [torch.tensor(p + tokens(rng.randint(*args.response))) for p in prompts]
    rejected = [torch.tensor(p + tokens(rng.randint(*args.response))) for p in prompts]
    return chosen + rejected, [len(p) for p in prompts] * 2


def timed_pass(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], examples: int, device: torch.device
) -> tuple[float, torch.Tensor]:
    """Seconds for one forward + backward of the summed log-probs, and the per-sequence sums."""
    inputs = {name: value.to(device) for name, value in batch.items()}
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    model.zero_grad(set_to_none=True)
    logps = model_logprobs(model, inputs, examples)
    logps.summed.sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, logps.summed.detach().float().cpu()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="tiny", choices=sorted(NAMED_SIZES))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--pairs", type=int, default=8, help="pairs per micro-batch")
    parser.add_argument("--prefix", type=int, default=40, help="prompt tokens every pair shares")
    parser.add_argument("--question", type=span, default=(10, 25), help="LOW,HIGH tokens of each pair's own prompt")
    parser.add_argument("--response", type=span, default=(20, 50), help="LOW,HIGH tokens of each response")
    parser.add_argument("--steps", type=int, default=20, help="timed micro-batches per arm")
    parser.add_argument("--warmup", type=int, default=3, help="untimed micro-batches per arm first")
    args = parser.parse_args()
    if args.pairs < 1 or args.prefix < 0 or args.steps < 1 or args.warmup < 0:
        parser.error("--pairs and --steps must be >= 1, --prefix and --warmup >= 0")

    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    spec = NAMED_SIZES[args.size]
    longest = args.prefix + args.question[1] + args.response[1]
    config = text_config(spec, max_position_embeddings=max(spec.max_position_embeddings, longest))
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(device=device, dtype=dtype).train()

    rng = random.Random(0)
    arms = {
        "padded": lambda rows, lengths: collate(rows, lengths, pad_id=0),
        "packed": lambda rows, lengths: pack_shared_prefix(rows, lengths, pad_id=0, dtype=dtype),
    }
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    positions: dict[str, list[int]] = {name: [] for name in arms}
    largest_difference = 0.0
    for step in range(args.warmup + args.steps):
        rows, prompt_lengths = micro_batch(rng, args, spec.vocab_size)
        sums = {}
        for name, build in arms.items():
            batch = build(rows, prompt_lengths)
            elapsed, sums[name] = timed_pass(model, batch, len(rows), device)
            if step >= args.warmup:
                seconds[name].append(elapsed)
                positions[name].append(batch["input_ids"].numel())
        largest_difference = max(largest_difference, float((sums["packed"] - sums["padded"]).abs().max()))

    arms_report = {
        name: {
            "seconds_per_micro_batch": round(statistics.median(seconds[name]), 5),
            "positions_per_micro_batch": round(statistics.mean(positions[name])),
        }
        for name in arms
    }
    print(
        json.dumps(
            {
                "benchmark": "packing_speed",
                "machine": f"{platform.machine()}, {args.device}"
                + (f" ({torch.cuda.get_device_name(0)})" if device.type == "cuda" else ""),
                "model": {"size": args.size, "parameters": sum(p.numel() for p in model.parameters())},
                "dtype": str(dtype).removeprefix("torch."),
                "workload": {
                    "pairs": args.pairs,
                    "prefix": args.prefix,
                    "question": list(args.question),
                    "response": list(args.response),
                    "steps": args.steps,
                },
                "arms": arms_report,
                "speedup_packed_over_padded": round(
                    statistics.median(seconds["padded"]) / statistics.median(seconds["packed"]), 3
                ),
                "max_abs_logprob_difference": round(largest_difference, 5),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
