"""A plug-in verifier for `shapes` that knows the scene (`reward.verifiers: {shapes: <this file>:grounded}`),
for the image-reasoning probes of `bench/online.py`.

Why: on yes/no and 3-4 option questions a policy that sees poorly is right by luck on a large share of its
samples, so final-answer pairs teach lucky answers. The shapes step check removes answers whose reasoning
does not derive them, but it cannot know whether the listing of the scene is true. This verifier checks it
against the prompt's scene: a sample is correct only when it lists the scene first, names exactly the
scene's shapes, derives its answer from there (the step check's reading) and that answer is the ground
truth. That is rare for the tiny policies here (0.3% of the 0.1-rate base's greedy answers), so
`counted` asks less of the listing: as many shapes as the scene has, whichever they are. Evaluation in
the bench stays on final answers (`bench/online.py`'s paired figures use the default grader).

Where the scene comes from: a record loaded from its file has `meta.scene`, but a gRPC prompt carries no
`meta`, so in the reward service (labelling, and the controller's held-out evaluation, which it judges)
the record has none (docs/reward.md). There the scene is looked up by prompt id in the JSONL files that
`MPO_SCENES` names (colon-separated), e.g. `MPO_SCENES=DIR/data/train.jsonl:DIR/data/heldout.jsonl`, set
before the run starts (local Ray workers inherit it).
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Callable
from typing import Any

from mpo.data.loader import load_prompts
from mpo.data.records import PromptRecord
from mpo.data.tasks import shapes_steps
from mpo.grading.hallucination import scene_objects
from mpo.grading.verify import Grader

_FINAL_ANSWER = Grader()  # the built-in judge of the answer ("auto")


@functools.cache
def _scenes(files: str) -> dict[str, Any]:
    scenes = {}
    for path in filter(None, files.split(os.pathsep)):
        scenes.update({r.id: r.meta["scene"] for r in load_prompts(path, check_images=False).records})
    return scenes


def scene_of(record: PromptRecord) -> list[tuple[str, str]]:
    """The record's scene: its own `meta.scene`, else the one `MPO_SCENES` holds for its id (KeyError naming
    the id and the variable when neither has it)."""
    if "scene" in record.meta:
        return scene_objects(record.meta["scene"])
    files = os.environ.get("MPO_SCENES", "")
    scenes = _scenes(files)
    if record.id not in scenes:
        raise KeyError(f"no scene for prompt {record.id!r}: not in meta, nor in MPO_SCENES={files!r}")
    return scene_objects(scenes[record.id])


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
