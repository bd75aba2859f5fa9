"""The BCO reward shift δ: a cumulative (no-decay) mean of one scalar per training micro-batch.

Each micro-batch contributes ``mean(cat(z_chosen, z_rejected))`` averaged across data-parallel ranks,
so every rank holds the same δ. The current micro-batch is folded in *before* δ is used, and δ starts
at 0. Public implementations drop δ on resume; we keep it in ``state_dict`` so a resumed run continues
with the same shift (docs/design.md §3).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

RankReducer = Callable[[torch.Tensor], torch.Tensor]


def sum_across_ranks(value: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over the default process group; the identity outside distributed training."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    reduced = value.detach().clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced


class RewardShift:
    """Running δ. ``update`` must be called once per training micro-batch on every rank."""

    def __init__(self, reduce_across_ranks: RankReducer = sum_across_ranks) -> None:
        self._reduce = reduce_across_ranks
        self._mean = 0.0
        self._count = 0

    @property
    def value(self) -> float:
        return self._mean

    @property
    def count(self) -> int:
        """Number of micro-batches folded into δ so far."""
        return self._count

    def update(self, chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, *, present: bool = True) -> float:
        """Fold this micro-batch's mean reward (averaged over ranks) into δ and return the new δ.

        Every rank calls it together; a rank whose micro-batch is padding (`present=False`) takes part
        in the reduction without a vote, so δ averages over the ranks that had pairs.
        """
        batch_mean = torch.cat([chosen_rewards.detach().reshape(-1), rejected_rewards.detach().reshape(-1)])
        # float64 keeps the running mean exact enough that a resumed run matches bit-for-bit in fp32.
        vote = torch.tensor(1.0 if present else 0.0, dtype=torch.float64, device=batch_mean.device)
        total = self._reduce(torch.stack([batch_mean.double().mean() * vote, vote]))
        if float(total[1]) == 0:
            return self._mean
        self._count += 1
        self._mean += (float(total[0] / total[1]) - self._mean) / self._count
        return self._mean

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self._mean, "count": self._count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"mean", "count"} - state.keys()
        if missing:
            raise KeyError(f"reward-shift state lacks {sorted(missing)}")
        if int(state["count"]) < 0:
            raise ValueError(f"reward-shift count must be >= 0, got {state['count']}")
        self._mean = float(state["mean"])
        self._count = int(state["count"])
