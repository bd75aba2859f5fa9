"""MPO step vs DPO-only step on the same batch and model (DESIGN §6 target: ratio ≤ 1.05).

One step = policy forward on chosen + rejected, objective, backward, optimizer step; reference
log-probs are computed once up front, as the trainer does. Both variants run interleaved in this
process on the same weights and batch, so the ratio is robust to machine noise. Prints JSON.

    .venv/bin/python bench/objective.py [--repeats 15] [--hidden 256] [--layers 4]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from mpo.config import ObjectiveConfig
from mpo.trainer import MPOObjective, response_labels, sequence_logprobs

VARIANTS = {
    "mpo": ObjectiveConfig(),
    "dpo_only": ObjectiveConfig(terms={"preference": 1.0}),
}


def build_batch(pairs: int, seq_len: int, prompt_len: int, vocab: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, vocab, (2 * pairs, seq_len), generator=generator)
    ids[pairs:, :prompt_len] = ids[:pairs, :prompt_len]  # chosen and rejected share the prompt
    mask = torch.ones_like(ids)
    lengths = torch.randint(prompt_len + 4, seq_len + 1, (2 * pairs,), generator=generator)
    mask[torch.arange(seq_len).unsqueeze(0) >= lengths.unsqueeze(1)] = 0
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": response_labels(ids, torch.full((2 * pairs,), prompt_len), mask),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=2048)
    args = parser.parse_args()

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=max(1, args.hidden // 128),
        max_position_embeddings=args.seq_len,
    )
    policy = Qwen2ForCausalLM(config).train()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=0.0)  # lr 0: every step sees identical weights
    batch = build_batch(args.pairs, args.seq_len, args.seq_len // 4, args.vocab)
    labels, n = batch["labels"], args.pairs

    with torch.no_grad():
        reference = sequence_logprobs(policy(batch["input_ids"], attention_mask=batch["attention_mask"]).logits, labels)
    reference_chosen, reference_rejected = reference.summed[:n], reference.summed[n:]

    def step(objective: MPOObjective) -> float:
        start = time.perf_counter()
        logits = policy(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        chosen = sequence_logprobs(logits[:n], labels[:n])
        rejected = sequence_logprobs(logits[n:], labels[n:])
        out = objective(chosen, rejected, reference_chosen, reference_rejected)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    objectives = {name: MPOObjective(cfg) for name, cfg in VARIANTS.items()}
    for objective in objectives.values():  # warm-up
        step(objective)
    times: dict[str, list[float]] = {name: [] for name in objectives}
    for _ in range(args.repeats):
        for name, objective in objectives.items():
            times[name].append(step(objective))

    medians = {name: statistics.median(values) for name, values in times.items()}
    tokens = int(batch["attention_mask"].sum())
    print(
        json.dumps(
            {
                "benchmark": "mpo_step_vs_dpo_step",
                "machine": f"{platform.machine()} cpu, torch threads {torch.get_num_threads()}",
                "model": {"hidden": args.hidden, "layers": args.layers, "vocab": args.vocab},
                "batch": {"pairs": args.pairs, "seq_len": args.seq_len, "tokens": tokens},
                "repeats": args.repeats,
                "median_step_s": {name: round(value, 5) for name, value in medians.items()},
                "tokens_per_s": {name: round(tokens / value, 1) for name, value in medians.items()},
                "ratio_mpo_over_dpo": round(medians["mpo"] / medians["dpo_only"], 4),
                "target_ratio_max": 1.05,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
