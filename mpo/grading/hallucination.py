"""Hallucination in open-ended descriptions of a scene whose ground truth is known (the `describe` task).

The MPO paper credits DropoutNTP pairs with fewer hallucinations; measuring that needs a metric computed
exactly from what the picture holds, not a judge model. A description's *mentions* are the noun phrases
"<determiner or number> [colour] <shape noun>" ("a red circle", "two squares", "the blue shapes", "no
triangles"). Each mention claims something checkable against the scene:

- "a" / "an": one more object of that kind. Hallucinated when the description has by then claimed more
  objects of the kind than the scene has (naming a colour or shape that is absent is the common case).
- a number ("one" ... "ten", digits, "no" = 0): exactly that many objects of the kind in the scene.
- "the": that the kind exists.

A description is hallucinated when any of its mentions is. Recall is the share of the scene's objects
that correct mentions naming both colour and shape account for. Words outside such phrases are not read:
the metric under-counts rather than guesses.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mpo.data.records import PromptRecord
from mpo.data.tasks.scenes import COLOURS, PLURALS, SHAPES

_NUMBERS = {
    word: value
    for value, word in enumerate(("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"))
}
_SHAPE_NOUNS = {**{shape: shape for shape in SHAPES}, **{plural: shape for shape, plural in PLURALS.items()}}
_MENTION = re.compile(
    r"\b(?P<det>a|an|the|" + "|".join(_NUMBERS) + r"|\d{1,6})\s+"
    r"(?:(?P<colour>" + "|".join(COLOURS) + r")\s+)?"
    r"(?P<noun>shapes?|" + "|".join(_SHAPE_NOUNS) + r")\b"
)

#: (colour or None, shape or None): what a mention is about; None is "any".
Kind = tuple[str | None, str | None]


@dataclass(frozen=True)
class Mention:
    kind: Kind
    #: "indefinite" (a/an), "exact" (a number) or "definite" (the).
    claim: str
    count: int
    hallucinated: bool


@dataclass(frozen=True)
class DescriptionCheck:
    """One description judged against its scene."""

    mentions: tuple[Mention, ...]
    #: Share of the scene's objects named correctly with colour and shape, in [0, 1].
    recall: float

    @property
    def hallucinated_mentions(self) -> int:
        return sum(mention.hallucinated for mention in self.mentions)

    @property
    def hallucinated(self) -> bool:
        return self.hallucinated_mentions > 0


def scene_objects(scene: Any) -> list[tuple[str, str]]:
    """The scene as (colour, shape) pairs; ValueError naming what is wrong when it is not a list of
    objects with a known `colour` and `shape` (as the built-in image tasks write `meta.scene`)."""
    if not isinstance(scene, list) or not scene:
        raise ValueError("meta.scene: must be a non-empty list of {colour, shape} objects")
    objects = []
    for i, item in enumerate(scene):
        if not isinstance(item, Mapping) or item.get("colour") not in COLOURS or item.get("shape") not in SHAPES:
            raise ValueError(
                f"meta.scene[{i}]: needs colour in {sorted(COLOURS)} and shape in {sorted(SHAPES)}, got {item!r}"
            )
        objects.append((item["colour"], item["shape"]))
    return objects


def _matching(objects: Counter[tuple[str, str]], kind: Kind) -> int:
    colour, shape = kind
    return sum(n for (c, s), n in objects.items() if colour in (None, c) and shape in (None, s))


def count_mentions(text: str) -> int:
    """How many mentions `text` makes, true or not: what `judge_description` judges, without a scene."""
    return sum(1 for _ in _MENTION.finditer(text.lower()))


def judge_description(scene: Sequence[tuple[str, str]], text: str) -> DescriptionCheck:
    """`text` judged against `scene` (from `scene_objects`)."""
    objects = Counter(scene)
    claimed = Counter[Kind]()
    covered = Counter[tuple[str, str]]()
    mentions = []
    for match in _MENTION.finditer(text.lower()):
        det, colour, noun = match["det"], match["colour"], match["noun"]
        kind: Kind = (colour, _SHAPE_NOUNS.get(noun))
        present = _matching(objects, kind)
        if det == "the":
            mention = Mention(kind, "definite", 0, present == 0)
        else:
            exact = det not in ("a", "an")
            count = (_NUMBERS[det] if det in _NUMBERS else int(det)) if exact else 1
            claimed[kind] += count
            wrong = count != present if exact else claimed[kind] > present
            mention = Mention(kind, "exact" if exact else "indefinite", count, wrong)
            if not wrong and colour is not None and kind[1] is not None:
                covered[colour, kind[1]] += count
        mentions.append(mention)
    named = sum(min(n, objects[kind]) for kind, n in covered.items())
    return DescriptionCheck(tuple(mentions), named / len(scene) if scene else 0.0)


@dataclass(frozen=True)
class HallucinationSummary:
    """Over many descriptions: the paper's three views of hallucination."""

    descriptions: int
    #: Share of descriptions with at least one hallucinated mention.
    rate: float
    #: Mean hallucinated mentions per description.
    mentions: float
    #: Mean recall of what the scene holds.
    recall: float


def summarize(checks: Iterable[DescriptionCheck]) -> HallucinationSummary:
    checks = list(checks)
    n = max(1, len(checks))
    return HallucinationSummary(
        descriptions=len(checks),
        rate=sum(check.hallucinated for check in checks) / n,
        mentions=sum(check.hallucinated_mentions for check in checks) / n,
        recall=sum(check.recall for check in checks) / n,
    )


def described_scenes(records: Iterable[PromptRecord]) -> dict[str, list[tuple[str, str]]]:
    """Prompt id -> scene of the records whose answers are judged for hallucination: open-ended (no
    ground-truth answer) and carrying `meta.scene`. ValueError naming the prompt for a malformed scene."""
    scenes = {}
    for record in records:
        if record.answer is None and "scene" in record.meta:
            try:
                scenes[record.id] = scene_objects(record.meta["scene"])
            except ValueError as error:
                raise ValueError(f"prompt {record.id!r}: {error}") from error
    return scenes
