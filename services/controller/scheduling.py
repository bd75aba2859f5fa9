"""Which prompts each round draws: seeded epochs over the prompt set, optionally a fixed share per task."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from mpo.data.records import PromptRecord


class PromptSampler:
    """Round k's prompts: the next `per_round` of an endless sequence of seeded shuffles of the set, so a
    resumed run draws exactly the prompts it would have drawn. With a task `mix`, each round takes a
    fixed share of prompts per task (largest remainders), each task from its own shuffled epochs.

    A round never spans two shuffles (the last `size % per_round` prompts of each shuffle are left for
    the next ones): a round that did could draw one prompt twice, which Generate refuses."""

    def __init__(
        self, records: Sequence[PromptRecord], *, per_round: int, seed: int, mix: Mapping[str, float] | None = None
    ) -> None:
        if not records:
            raise ValueError("the prompt set is empty")
        self.per_round, self.seed = per_round, seed
        if not mix:
            if per_round > len(records):
                raise ValueError(f"prompts_per_round: {per_round}, but the prompt set has {len(records)} prompts")
            self.pools = {"": list(records)}
            self.counts = {"": per_round}
            return
        by_task: dict[str, list[PromptRecord]] = {}
        for record in records:
            by_task.setdefault(record.task, []).append(record)
        missing = sorted(set(mix) - set(by_task))
        if missing:
            raise ValueError(
                f"task_mix names tasks without prompts: {', '.join(missing)} (have: {', '.join(sorted(by_task))})"
            )
        self.pools = {task: by_task[task] for task in mix}
        self.counts = _apportion(per_round, mix)
        for task, count in self.counts.items():
            if count > len(self.pools[task]):
                raise ValueError(
                    f"task_mix: {count} {task} prompts per round, but the prompt set has {len(self.pools[task])}"
                )

    def _epoch(self, pool: str, index: int) -> list[PromptRecord]:
        order = list(self.pools[pool])
        random.Random(f"{self.seed}-{pool}-{index}" if pool else f"{self.seed}-{index}").shuffle(order)
        return order

    def round(self, round_index: int) -> list[PromptRecord]:
        drawn = []
        for pool, count in self.counts.items():
            if not count:
                continue
            rounds_per_epoch = len(self.pools[pool]) // count
            epoch, within = divmod(round_index - 1, rounds_per_epoch)
            drawn.extend(self._epoch(pool, epoch)[within * count : (within + 1) * count])
        return drawn


def _apportion(total: int, weights: Mapping[str, float]) -> dict[str, int]:
    """`total` split in proportion to `weights`, whole numbers that add up (largest remainders)."""
    scale = sum(weights.values())
    exact = {key: total * weight / scale for key, weight in weights.items()}
    counts = {key: int(share) for key, share in exact.items()}
    by_remainder = sorted(exact, key=lambda key: exact[key] - counts[key], reverse=True)
    for key in by_remainder[: total - sum(counts.values())]:
        counts[key] += 1
    return counts
