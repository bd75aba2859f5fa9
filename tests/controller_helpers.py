"""Shared pieces of the controller tests: one-step sums and a tiny policy bootstrapped on them in seconds,
so that its samples at temperature 1 are right on some prompts and wrong on others."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from mpo.config import BootstrapConfig, RewardConfig, RolloutConfig
from mpo.data.records import PromptRecord
from mpo.models.tiny import build_text_model
from mpo.services.reward.service import RunningReward, start_reward
from mpo.services.rollout.server import RunningRollout, start_rollout
from mpo.trainer.service import RunningTrainer, start_trainer
from mpo.trainer.sft import bootstrap
from tests.rollout_helpers import CORPUS, SMALL
from tests.test_trainer_deepspeed import config_for


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


@dataclass
class RoundServices:
    """The three services a round needs, started in this process (Ray must be initialised)."""

    rollout: RunningRollout
    reward: RunningReward
    trainer: RunningTrainer

    async def stop(self) -> None:
        await self.trainer.stop(0)
        await self.reward.stop(0)
        await self.rollout.stop(0)


async def start_round_services(
    policy: Path, root: Path, *, global_batch_pairs: int, step_checks: bool = False
) -> RoundServices:
    """vLLM rollout (weight ledger under `root`), reward (with the arith step check when `step_checks`:
    fewer pairs, so rounds without any become likely), and 2 DeepSpeed ranks publishing to the rollout."""
    rollout = await start_rollout(
        RolloutConfig(
            model=policy, backend="vllm", dtype="float32", enforce_eager=True, max_model_len=256,
            kv_cache_bytes=16 * 2**20, weights_dir=root / "ledger",
        )
    )  # fmt: skip
    checks = {"arith": "arith_steps"} if step_checks else {}
    reward = await start_reward(RewardConfig(rollout_address=rollout.address, task_step_checks=checks))
    trainer = await start_trainer(
        config_for(
            policy, root, rollout_address=rollout.address, global_batch_pairs=global_batch_pairs, micro_batch_pairs=4
        )
    )
    return RoundServices(rollout, reward, trainer)
