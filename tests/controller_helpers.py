"""Shared pieces of the controller tests: one-step sums and a tiny policy bootstrapped on them in seconds,
so that its samples at temperature 1 are right on some prompts and wrong on others."""

from __future__ import annotations

import random
from pathlib import Path

from mpo.config import BootstrapConfig
from mpo.data.records import PromptRecord
from mpo.models.tiny import build_text_model
from mpo.trainer.sft import bootstrap
from tests.rollout_helpers import CORPUS, SMALL


def sums(count: int, offset: int) -> list[PromptRecord]:
    return [
        PromptRecord(id=f"s{offset + i}", question=f"What is {a} + {b}?", answer=str(a + b), task="arith")
        for i, (a, b) in enumerate((i % 10, (7 * i + offset) % 10) for i in range(count))
    ]


def demonstrate(record: PromptRecord, rng: random.Random) -> str:
    a, b = record.question.removeprefix("What is ").removesuffix("?").split(" + ")
    return f"{a} + {b} = {int(a) + int(b)}. Final answer: {int(a) + int(b)}"


def bootstrapped_policy(root: Path) -> Path:
    model = build_text_model(root / "model", CORPUS, SMALL, seed=0)
    config = BootstrapConfig(
        steps=150, batch_size=16, learning_rate=3e-3, warmup_steps=5, eval_every=1000, eval_prompts=4,
        stability_steps=0, pass_k=1, max_new_tokens=16, ema_decay=0.0,
    )  # fmt: skip
    bootstrap(model, root / "base", sums(200, 0), sums(8, 500), demonstrate, config, progress=False)
    return root / "base"
