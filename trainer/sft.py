"""Supervised warm start ("bootstrap") of a tiny policy on chain-of-thought demonstrations.

The paper starts MPO from an SFT model; online preference learning needs a base that answers in the
CoT format, is right often enough to produce pairs, and is stable rather than mid-jump. The rate
warms up, then decays (cosine) to a floor, so the saved policy sits at the end of an annealed run as a
real SFT checkpoint does; the stability check trains on at that floor rate ("more of the same
training barely moves held-out accuracy") and the accuracy curve is reported.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from mpo.config import BootstrapConfig
from mpo.data.records import PromptRecord
from mpo.data.tasks import bootstrap_ema_decay
from mpo.evaluation import EvalResult, evaluate
from mpo.models.demonstrations import DemonstrationBatcher
from mpo.models.generate import Sampling, TransformersGenerator
from mpo.models.loading import vision_tower
from mpo.models.logprobs import model_logprobs

#: Writes one demonstration for a record; a fresh rng draw gives another valid line of reasoning.
Demonstrator = Callable[[PromptRecord, random.Random], str | None]


@dataclass
class BootstrapReport:
    steps: int
    seconds: float
    ema_decay: float = 0.0
    curve: list[tuple[int, float]] = field(default_factory=list)
    final: EvalResult | None = None
    pass_at_k: EvalResult | None = None
    after_stability: EvalResult | None = None
    losses: list[float] = field(default_factory=list)

    @property
    def stability_delta(self) -> float | None:
        if self.final is None or self.after_stability is None:
            return None
        return self.after_stability.accuracy - self.final.accuracy

    def summary(self) -> dict[str, object]:
        return {
            "steps": self.steps,
            "ema_decay": self.ema_decay,
            "train_seconds": round(self.seconds, 1),
            "curve": [{"step": step, "greedy_accuracy": round(acc, 4)} for step, acc in self.curve],
            "final": self.final.summary() if self.final else None,
            "pass_at_k": self.pass_at_k.summary() if self.pass_at_k else None,
            "after_stability": self.after_stability.summary() if self.after_stability else None,
            "stability_delta_points": None if self.stability_delta is None else round(100 * self.stability_delta, 2),
            "final_loss": round(sum(self.losses[-20:]) / max(1, len(self.losses[-20:])), 4),
        }


def sft_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor], max_grad_norm: float
) -> float:
    """One optimizer step on the batch's token-mean NLL (clipped); returns the loss."""
    loss = model_logprobs(model, batch).token_mean_nll()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return loss.item()


def parameter_groups(model: torch.nn.Module, config: BootstrapConfig) -> list[dict[str, object]]:
    """The optimizer's groups: the image encoder at `vision_lr_ratio` of the peak rate (frozen at 0), as
    the full rate spoils the features a small random tower starts with; everything else at the peak."""
    tower = vision_tower(model)
    if tower is None or config.vision_lr_ratio == 1.0:
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]
    in_tower = {id(p) for p in tower.parameters()}
    rest = [p for p in model.parameters() if id(p) not in in_tower and p.requires_grad]
    if config.vision_lr_ratio == 0.0:
        tower.requires_grad_(False)
        return [{"params": rest}]
    tower_rate = config.learning_rate * config.vision_lr_ratio
    return [{"params": rest}, {"params": [p for p in tower.parameters() if p.requires_grad], "lr": tower_rate}]


def bootstrap(
    model_dir: Path,
    out_dir: Path,
    train: Sequence[PromptRecord],
    heldout: Sequence[PromptRecord],
    demonstrate: Demonstrator,
    config: BootstrapConfig,
    *,
    progress: bool = True,
) -> BootstrapReport:
    """Train, evaluate along the way, save the base policy to `out_dir`, then run the stability check."""
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    generator = TransformersGenerator(model_dir)
    model = generator.model
    model.train()
    batcher = DemonstrationBatcher(generator)
    optimizer = torch.optim.AdamW(
        parameter_groups(model, config), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    schedule = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, config.warmup_steps, config.steps, min_lr_rate=config.final_lr_ratio
    )
    eval_set = list(heldout[: config.eval_prompts])
    greedy = Sampling(n=1, temperature=0.0, max_new_tokens=config.max_new_tokens)
    report = BootstrapReport(steps=config.steps, seconds=0.0)
    # Records with something to imitate: chains of thought, and reference answers of open-ended tasks.
    train = [r for r in train if demonstrate(r, random.Random(0)) is not None]
    if not train:
        raise ValueError("bootstrap: no training record has a demonstration to imitate")
    # Optionally the base is an exponential moving average of the weights: the last iterate of a small
    # model flips answers from step to step (shapes' multiple choice moved ~3 points between evaluations).
    decay = bootstrap_ema_decay(train) if config.ema_decay is None else config.ema_decay
    report.ema_decay = decay
    averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay)) if decay else None
    policy = TransformersGenerator(model_dir, model=averaged.module) if averaged is not None else generator
    started = time.perf_counter()

    def run(steps: int, label: str, *, scheduled: bool) -> None:
        bar = tqdm(range(steps), desc=label, disable=not progress, dynamic_ncols=True)
        for _ in bar:
            examples = []
            while len(examples) < config.batch_size:
                record = rng.choice(train)
                demonstration = demonstrate(record, rng)
                if demonstration is not None:
                    examples.append((record, demonstration))
            loss = sft_step(model, optimizer, batcher.loss_batch(examples), config.max_grad_norm)
            if averaged is not None:
                averaged.update_parameters(model)
            if scheduled:
                schedule.step()
            report.losses.append(loss)
            step = len(report.losses)
            bar.set_postfix(loss=f"{loss:.3f}")
            if scheduled and step % config.eval_every == 0:
                accuracy = evaluate(policy, eval_set, greedy).accuracy
                report.curve.append((step, accuracy))
                bar.write(f"step {step}: held-out greedy accuracy {accuracy:.3f}", file=sys.stderr)

    run(config.steps, "bootstrap", scheduled=True)
    report.seconds = time.perf_counter() - started
    report.final = evaluate(policy, eval_set, greedy)
    policy.model.save_pretrained(out_dir, safe_serialization=True)
    (generator.processor or generator.tokenizer).save_pretrained(out_dir)
    policy.model.generation_config.save_pretrained(out_dir)
    report.pass_at_k = evaluate(
        policy,
        eval_set,
        Sampling(n=config.pass_k, temperature=1.0, seed=config.seed, max_new_tokens=config.max_new_tokens),
    )
    if config.stability_steps:
        for group in optimizer.param_groups:  # past the schedule's end the cosine would rise again
            group["lr"] = group["initial_lr"] * config.final_lr_ratio
        run(config.stability_steps, "stability check", scheduled=False)
        report.after_stability = evaluate(policy, eval_set, greedy)
    return report
