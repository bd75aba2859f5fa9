"""Policy trainer: the MPO objective (here) and, as it lands, the DeepSpeed ZeRO-3 rank actors."""

from mpo.models.logprobs import IGNORE_INDEX, SequenceLogProbs, model_logprobs, response_labels, sequence_logprobs
from mpo.trainer.objective import MPOObjective, MPOOutput, preference_loss, quality_loss
from mpo.trainer.reward_shift import RewardShift, sum_across_ranks

__all__ = [
    "IGNORE_INDEX",
    "MPOObjective",
    "MPOOutput",
    "RewardShift",
    "SequenceLogProbs",
    "model_logprobs",
    "preference_loss",
    "quality_loss",
    "response_labels",
    "sequence_logprobs",
    "sum_across_ranks",
]
