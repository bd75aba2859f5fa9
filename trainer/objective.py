"""The Mixed Preference Optimization objective (docs/design.md §3; Wang et al. 2024, arXiv 2411.10442).

Per pair, with summed response log-probs of the policy πθ and the frozen reference π0:

    z_c = β·(log πθ(y_c|x) − log π0(y_c|x)),   z_r = β·(log πθ(y_r|x) − log π0(y_r|x))
    preference = −log σ(z_c − z_r)                        (DPO, sigmoid)
    quality    = −log σ(z_c − δ) − log σ(−(z_r − δ))      (BCO pair, reward shift δ)
    generation = token-mean NLL of the chosen responses   (SFT)
    loss       = Σ weight·term over the configured terms

Matches TRL 0.20–0.28 ``DPOTrainer(loss_type=["sigmoid", "bco_pair", "sft"])``; the pair terms are
averaged over the pairs of the micro-batch. Terms left out of the config are still reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mpo.config import ObjectiveConfig
from mpo.models.logprobs import SequenceLogProbs
from mpo.trainer.reward_shift import RewardShift


def preference_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """DPO sigmoid loss per pair."""
    return -F.logsigmoid(chosen_rewards - rejected_rewards)


def quality_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, delta: float) -> torch.Tensor:
    """BCO pair loss per pair: the chosen should score above δ, the rejected below it."""
    return -F.logsigmoid(chosen_rewards - delta) - F.logsigmoid(-(rejected_rewards - delta))


@dataclass(frozen=True)
class MPOOutput:
    loss: torch.Tensor
    #: Detached 0-d tensors (no host sync forced): each term, δ, rewards, margin, preference accuracy.
    metrics: dict[str, torch.Tensor]


class MPOObjective:
    """MPO loss for one micro-batch of pairs; owns δ, so checkpoint it via ``state_dict``."""

    def __init__(self, config: ObjectiveConfig, reward_shift: RewardShift | None = None) -> None:
        self.config = config
        self.reward_shift = reward_shift if reward_shift is not None else RewardShift()

    def __call__(
        self,
        policy_chosen: SequenceLogProbs,
        policy_rejected: SequenceLogProbs,
        reference_chosen_logps: torch.Tensor,
        reference_rejected_logps: torch.Tensor,
        *,
        training: bool = True,
        step_pairs: int | None = None,
        step_chosen_tokens: int | None = None,
        padding: bool = False,
    ) -> MPOOutput:
        """Loss and metrics. ``training=False`` (evaluation) reads δ without folding the batch into it.

        With ``step_pairs`` / ``step_chosen_tokens`` (the whole optimizer step's counts, over all ranks
        and micro-batches) the terms are this micro-batch's *share* of the step's terms: pair terms are
        divided by the step's pairs, the generation term by the step's chosen tokens, so the shares add
        up to the loss of one big batch whatever the split. ``padding`` marks a rank's filler
        micro-batch: it takes part in δ's reduction without a vote and its loss is zero.
        """
        shapes = {
            tuple(t.shape)
            for t in (
                policy_chosen.summed,
                policy_rejected.summed,
                reference_chosen_logps,
                reference_rejected_logps,
            )
        }
        if len(shapes) != 1 or len(next(iter(shapes))) != 1:
            raise ValueError(f"all four log-prob tensors must be [pairs] of one size, got shapes {sorted(shapes)}")

        beta = self.config.beta
        # The reference is frozen: its log-probs are data, never differentiated.
        chosen_rewards = beta * (policy_chosen.summed - reference_chosen_logps.detach())
        rejected_rewards = beta * (policy_rejected.summed - reference_rejected_logps.detach())

        shift = self.reward_shift
        delta = shift.update(chosen_rewards, rejected_rewards, present=not padding) if training else shift.value

        pair_divisor = step_pairs or chosen_rewards.shape[0]
        generation = (
            -policy_chosen.summed.sum() / step_chosen_tokens if step_chosen_tokens else policy_chosen.token_mean_nll()
        )
        terms = {
            "preference": preference_loss(chosen_rewards, rejected_rewards).sum() / pair_divisor,
            "quality": quality_loss(chosen_rewards, rejected_rewards, delta).sum() / pair_divisor,
            "generation": generation,
        }
        loss = sum(weight * terms[name] for name, weight in self.config.terms.items())
        if padding:
            loss = loss * 0.0

        with torch.no_grad():
            metrics = {
                "loss": loss.detach(),
                **{f"loss/{name}": value.detach() for name, value in terms.items()},
                "reward_shift": torch.tensor(delta, dtype=torch.float64, device=chosen_rewards.device),
                "rewards/chosen": chosen_rewards.detach().mean(),
                "rewards/rejected": rejected_rewards.detach().mean(),
                "rewards/margin": (chosen_rewards - rejected_rewards).detach().mean(),
                "rewards/accuracy": (chosen_rewards > rejected_rewards).float().mean(),
            }
        return MPOOutput(loss=loss, metrics=metrics)

    def state_dict(self) -> dict[str, Any]:
        return {"reward_shift": self.reward_shift.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.reward_shift.load_state_dict(state["reward_shift"])
