"""MPO step vs DPO-only step on the same batch and model (target: ratio ≤ 1.05).

One step = policy forward on chosen + rejected, objective, backward, optimizer step; reference
log-probs are computed once up front, as the trainer does. Both variants run interleaved in this
process on the same weights and batch, so the ratio is robust to machine noise. Prints JSON.

By default the policy is a random Qwen2 text model on random token ids. With `--family NAME` it is
that family's tiny model (`mpo.models.families`) on a real batch encoded as the trainer encodes one:
chat-templated prompts (with a PNG image each for image-text families) through `PairEncoder` and
`pair_batch`, so the forward takes every processor output (pixel_values, image_grid_thw, ...).

    .venv/bin/python bench/objective.py [--repeats 15] [--hidden 256] [--layers 4]
    .venv/bin/python bench/objective.py --family qwen2-vl [--repeats 15] [--pairs 8]
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import Qwen2Config, Qwen2ForCausalLM

from mpo.config import ObjectiveConfig
from mpo.models.families import FAMILIES, build_family_model
from mpo.models.loading import context_length, load_model
from mpo.trainer import MPOObjective, SequenceLogProbs, model_logprobs, response_labels
from mpo.trainer.batching import PairEncoder, pair_batch
from mpo.v1 import common_pb2

VARIANTS = {
    "mpo": ObjectiveConfig(),
    "dpo_only": ObjectiveConfig(terms={"preference": 1.0}),
}
#: Image side in pixels: Qwen2-VL's tiny processor keeps it (a multiple of 28), 4 image tokens per prompt.
IMAGE_SIZE = 56
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")

Batch = dict[str, torch.Tensor]


def build_batch(pairs: int, seq_len: int, prompt_len: int, vocab: int) -> Batch:
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


def random_qwen2(args: argparse.Namespace) -> tuple[torch.nn.Module, Batch, dict[str, Any]]:
    """The default policy: a random Qwen2 of the requested size, on random token ids."""
    config = Qwen2Config(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=4 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=max(1, args.hidden // 128),
        max_position_embeddings=args.seq_len,
    )
    batch = build_batch(args.pairs, args.seq_len, args.seq_len // 4, args.vocab)
    return Qwen2ForCausalLM(config), batch, {"hidden": args.hidden, "layers": args.layers, "vocab": args.vocab}


def png(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def preference_pairs(count: int, with_images: bool) -> list[common_pb2.PreferencePair]:
    """Arithmetic pairs of a few response lengths; chosen and rejected differ in length as sampled ones do."""
    pairs = []
    for i in range(count):
        a, b = i + 2, 2 * i + 3
        prompt = common_pb2.Prompt(id=f"p{i}", question=f"What is {a} + {b}?", task="arith", answer=str(a + b))
        if with_images:
            prompt.images.add(data=png(COLOURS[i % len(COLOURS)]))
        steps = " ".join(f"{a} + {k} = {a + k}." for k in range(1, 2 + i % 4))
        chosen = f"{steps} So {a} + {b} = {a + b}. Final answer: {a + b}"
        rejected = f"{a} + {b} = {a + b + 1}. Final answer: {a + b + 1}"
        pairs.append(common_pb2.PreferencePair(id=f"x{i}", prompt=prompt, chosen=chosen, rejected=rejected))
    return pairs


def family_model(name: str, pairs: int, workdir: Path) -> tuple[torch.nn.Module, Batch, dict[str, Any]]:
    """`name`'s tiny model and a batch of `pairs` encoded by the trainer's own `PairEncoder` / `pair_batch`."""
    model_dir = build_family_model(name, workdir / name, seed=0)
    encoder = PairEncoder(model_dir, max_length=context_length(model_dir), readable_roots=[])
    encoded = encoder.encode_all(preference_pairs(pairs, FAMILIES[name].image_text))
    batch = pair_batch(encoded, encoder.tokenizer.pad_token_id or 0)
    policy = load_model(model_dir)
    text = policy.config.get_text_config()
    size = {
        "parameters": sum(p.numel() for p in policy.parameters()),
        "hidden": text.hidden_size,
        "layers": text.num_hidden_layers,
        "vocab": text.vocab_size,
    }
    return policy, batch, size


def timed_steps(policy: torch.nn.Module, batch: Batch, pairs: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per step of each variant, interleaved, after one warm-up step each."""
    optimizer = torch.optim.AdamW(policy.parameters(), lr=0.0)  # lr 0: every step sees identical weights
    with torch.no_grad():
        reference = model_logprobs(policy, batch, 2 * pairs).summed
    reference_chosen, reference_rejected = reference[:pairs], reference[pairs:]

    def step(objective: MPOObjective) -> float:
        start = time.perf_counter()
        logps = model_logprobs(policy, batch, 2 * pairs)
        chosen = SequenceLogProbs(logps.summed[:pairs], logps.token_counts[:pairs])
        rejected = SequenceLogProbs(logps.summed[pairs:], logps.token_counts[pairs:])
        out = objective(chosen, rejected, reference_chosen, reference_rejected)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    objectives = {name: MPOObjective(cfg) for name, cfg in VARIANTS.items()}
    for objective in objectives.values():  # warm-up
        step(objective)
    times: dict[str, list[float]] = {name: [] for name in objectives}
    for _ in range(repeats):
        for name, objective in objectives.items():
            times[name].append(step(objective))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--family", choices=sorted(FAMILIES), help="a tiny model of this family on a real batch")
    parser.add_argument("--seq-len", type=int, default=128, help="random Qwen2 only")
    parser.add_argument("--hidden", type=int, default=256, help="random Qwen2 only")
    parser.add_argument("--layers", type=int, default=4, help="random Qwen2 only")
    parser.add_argument("--vocab", type=int, default=2048, help="random Qwen2 only")
    args = parser.parse_args()

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="mpo-bench-objective-") as workdir:
        if args.family:  # the weights are in memory once loaded: the model directory can go
            policy, batch, model = family_model(args.family, args.pairs, Path(workdir))
        else:
            policy, batch, model = random_qwen2(args)
    times = timed_steps(policy.train(), batch, args.pairs, args.repeats)

    medians = {name: statistics.median(values) for name, values in times.items()}
    tokens = int(batch["attention_mask"].sum())
    print(
        json.dumps(
            {
                "benchmark": "mpo_step_vs_dpo_step",
                "machine": f"{platform.machine()} cpu, torch threads {torch.get_num_threads()}",
                "family": args.family or "random-qwen2",
                "model": model,
                "batch": {
                    "pairs": args.pairs,
                    "seq_len": batch["input_ids"].shape[1],
                    "tokens": tokens,
                    "inputs": sorted(batch),
                },
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
