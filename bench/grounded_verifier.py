"""Plug-in verifiers that know the scene: for `shapes` (`reward.verifiers: {shapes: <this file>:grounded}`),
for the image-reasoning probes of `bench/online.py`, and for descriptions (`described`), for the
ground-truth reference of `bench/hallucination.py`.

Why: on yes/no and 3-4 option questions a policy that sees poorly is right by luck on a large share of its
samples, so final-answer pairs teach lucky answers. The shapes step check removes answers whose reasoning
does not derive them, but it cannot know whether the listing of the scene is true. This verifier checks it
against the prompt's scene: a sample is correct only when it lists the scene first, names exactly the
scene's shapes, derives its answer from there (the step check's reading) and that answer is the ground
truth. That is rare for the tiny policies here (0.3% of the 0.1-rate base's greedy answers), so
`counted` asks less of the listing: as many shapes as the scene has, whichever they are. Evaluation in
the bench stays on final answers (`bench/online.py`'s paired figures use the default grader).

`described` scores a description of the scene by what the hallucination metric counts: the F1 of its
precision (the share of its mentions that are true) and its recall (the share of the scene it names).

The scene is the prompt's `meta.scene`, which reaches the reward service in `Prompt.meta_json`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from mpo.data.records import PromptRecord
from mpo.data.tasks import shapes_steps
from mpo.grading.hallucination import judge_description, scene_objects
from mpo.grading.verify import Grader

_FINAL_ANSWER = Grader()  # the built-in judge of the answer ("auto")


def scene_of(record: PromptRecord) -> list[tuple[str, str]]:
    """The record's scene (KeyError naming the prompt when its meta has none)."""
    if "scene" not in record.meta:
        raise KeyError(f"prompt {record.id!r} has no meta.scene")
    return scene_objects(record.meta["scene"])


def grounded(response: str, record: PromptRecord) -> bool:
    """Right answer, derived step by step from a listing that names exactly the scene's shapes."""
    return _derived_from_listing(response, record, lambda listing, scene: Counter(listing) == Counter(scene))


def counted(response: str, record: PromptRecord) -> bool:
    """Right answer, derived step by step from a listing of as many shapes as the scene has."""
    return _derived_from_listing(response, record, lambda listing, scene: len(listing) == len(scene))


def _derived_from_listing(
    response: str, record: PromptRecord, listing_holds: Callable[[list[tuple[str, str]], list[tuple[str, str]]], bool]
) -> bool:
    judgement = _FINAL_ANSWER.judge(response, record)
    if not judgement.correct:
        return False
    rationale = judgement.extraction.rationale
    listing = shapes_steps.scene_listing(rationale)
    if listing is None or not listing_holds(listing, scene_of(record)):
        return False
    return shapes_steps.derivation_holds(record.question, rationale, str(record.answer))


def described(response: str, record: PromptRecord) -> float:
    """F1 of the description's precision and recall against the scene; 0 when it names nothing."""
    check = judge_description(scene_of(record), response)
    if not check.mentions:
        return 0.0
    precision = 1 - check.hallucinated_mentions / len(check.mentions)
    total = precision + check.recall
    return 2 * precision * check.recall / total if total else 0.0
