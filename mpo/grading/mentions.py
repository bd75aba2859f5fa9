"""Mention counters: how many things a response names, per task. They guard DropoutNTP's pairs.

Why: DropoutNTP (services/reward/dropout_ntp.py) prefers the answer written with the image over the same
prefix continued without it, assuming the blind side differs in *what* it names. On a policy that sees, it
differs first in *how much* it names: the blind continuation lists fewer objects, so most pairs teach "name
more" and the rounds raise hallucination (docs/results.md). A task mapped to a counter in
`RewardConfig.task_mention_counters` keeps a DropoutNTP pair only when its rejected side names at least as
many things as its chosen side, so what is left differs in which things are named. Measured on describe, the
rounds then lower the hallucination rate and recall with it: the kept pairs come from the answers that name
little (docs/results.md). A counter reads the text alone, never the prompt's ground truth: it is as
task-aware as a step check, and no more.

Adding a counter: a class with a unique `name` and `count(text) -> int`, registered with
`register_mention_counter`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from mpo.grading.hallucination import count_mentions
from mpo.grading.registry import register_named


@runtime_checkable
class MentionCounter(Protocol):
    name: str

    def count(self, text: str) -> int:
        """How many things `text` names (objects, entities, facts: whatever the task's answers list)."""
        ...


class SceneObjectCounter:
    """Noun phrases naming shapes, as the hallucination metric reads them ("a red circle", "two squares",
    "the blue shapes"): the built-in `describe` task's mentions."""

    name = "scene_objects"

    def count(self, text: str) -> int:
        return count_mentions(text)


MENTION_COUNTERS: dict[str, MentionCounter] = {}


def register_mention_counter(counter: MentionCounter) -> MentionCounter:
    return register_named(MENTION_COUNTERS, counter, "mention counter")


register_mention_counter(SceneObjectCounter())
