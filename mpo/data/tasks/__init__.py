"""Built-in reasoning tasks: seeded generators of prompt records plus chain-of-thought demonstrations.

Why built in: the embedded demo needs problems a ~1M-parameter policy partly solves (graded
difficulty), with several valid lines of reasoning (so sampling finds answers greedy decoding misses)
and an exact verifier, without downloading any data set.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from mpo.data.records import PromptRecord
from mpo.data.tasks.arith import ArithTask
from mpo.data.tasks.shapes import DescribeTask, ShapesTask
from mpo.data.tasks.splits import HELDOUT_KEY_FRACTION, make_splits, split_of


@runtime_checkable
class Task(Protocol):
    name: str
    has_images: bool
    #: Weight-average decay the bootstrap uses for this task unless told otherwise (docs/results.md):
    #: 0 where the last iterate is still improving, > 0 where it flips answers from step to step.
    bootstrap_ema_decay: float

    def generate(self, n: int, seed: int, image_dir: Path | None) -> list[PromptRecord]:
        """`n` records, identical for equal seeds; image tasks write PNGs into `image_dir` and
        reference them by absolute path. Item i does not depend on n."""
        ...

    def demonstration(self, record: PromptRecord, rng: random.Random) -> str | None:
        """What the warm start imitates: for a record with ground truth, a chain of thought ending in a
        line "Final answer: X" with its answer; for an open-ended one, a reference answer. Different rngs
        give (often) different valid answers. None when the task has nothing to imitate."""
        ...

    def key(self, record: PromptRecord) -> str:
        """What makes two records the same problem (used to keep splits disjoint)."""
        ...


TASKS: dict[str, Task] = {task.name: task for task in (ArithTask(), ShapesTask(), DescribeTask())}


def bootstrap_ema_decay(records: Sequence[PromptRecord]) -> float:
    """The steadiest decay any built-in task among `records` asks for; 0 (last iterate) for user tasks."""
    return max((TASKS[r.task].bootstrap_ema_decay for r in records if r.task in TASKS), default=0.0)


__all__ = [
    "HELDOUT_KEY_FRACTION",
    "TASKS",
    "ArithTask",
    "DescribeTask",
    "ShapesTask",
    "Task",
    "bootstrap_ema_decay",
    "make_splits",
    "split_of",
]
