"""Which pairs each rank trains on, in which micro-batch of which optimizer step.

Every rank computes the same plan from the same inputs (no communication needed). The rules:
- an epoch is a seeded shuffle of the pairs, cut into optimizer steps of `global_batch` pairs (the last
  step takes what is left);
- a step's pairs are sorted by length and cut into equal-as-possible micro-batches of at most
  `micro_batch` pairs (length buckets: little padding), dealt round-robin to the ranks;
- every rank runs the same number of micro-batches (ZeRO-3 gathers parameters collectively in every
  forward and backward), so a rank short of pairs gets an empty micro-batch, run with weight 0.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StepPlan:
    #: Pairs in the step (over all ranks): what the step's loss is averaged over.
    pairs: int
    #: micro_batches[rank][k]: indices of the pairs of micro-batch k on that rank (maybe empty).
    micro_batches: tuple[tuple[tuple[int, ...], ...], ...]


def plan_step(indices: Sequence[int], lengths: Sequence[int], *, micro_batch: int, world_size: int) -> StepPlan:
    per_rank = -(-len(indices) // (micro_batch * world_size))
    total = per_rank * world_size
    ordered = sorted(indices, key=lambda i: lengths[i])
    base, extra = divmod(len(ordered), total)
    chunks, start = [], 0
    for j in range(total):
        size = base + (1 if j < extra else 0)
        chunks.append(tuple(ordered[start : start + size]))
        start += size
    return StepPlan(
        pairs=len(indices),
        micro_batches=tuple(
            tuple(chunks[k * world_size + rank] for k in range(per_rank)) for rank in range(world_size)
        ),
    )


def plan_epoch(
    lengths: Sequence[int], *, global_batch: int, micro_batch: int, world_size: int, seed: int
) -> list[StepPlan]:
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    return [
        plan_step(order[start : start + global_batch], lengths, micro_batch=micro_batch, world_size=world_size)
        for start in range(0, len(order), global_batch)
    ]
