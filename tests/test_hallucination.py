"""The hallucination metric of open-ended scene descriptions, judged exactly from the scene."""

from __future__ import annotations

import random
import re

import pytest

from mpo.data.tasks import TASKS
from mpo.data.tasks.scenes import describe_scene, random_scene
from mpo.grading.hallucination import judge_description, scene_objects, summarize

SCENE = [("red", "circle"), ("red", "circle"), ("blue", "square"), ("green", "triangle")]


@pytest.mark.parametrize("seed", range(40))
def test_a_reference_description_names_everything_and_nothing_else(seed: int) -> None:
    rng = random.Random(seed)
    scene = random_scene(rng)
    check = judge_description(scene_objects(scene), describe_scene(scene, rng))
    assert len(check.mentions) == len(scene)
    assert not check.hallucinated and check.recall == 1.0


@pytest.mark.parametrize(
    ("text", "hallucinated", "recall"),
    [
        ("I see a red circle, a red circle, a blue square and a green triangle.", 0, 1.0),
        ("I see two red circles and a blue square.", 0, 0.75),
        ("The image shows a yellow circle.", 1, 0.0),  # a colour not in the scene
        ("I see a red square.", 1, 0.0),  # both words are there, the combination is not
        ("I see a red circle, a red circle, a red circle.", 1, 0.5),  # one more than there are
        ("I see three red circles.", 1, 0.0),  # a wrong count
        ("There are 4 shapes and no triangles.", 1, 0.0),  # right total, wrong "no"
        ("There are no yellow shapes. The blue square is small.", 0, 0.0),
        ("The green circle is small.", 1, 0.0),
        ("I see a circle and a triangle.", 0, 0.0),  # right, but too vague to count as recall
        ("Red, blue and green.", 0, 0.0),  # no mention phrases: nothing read
    ],
)
def test_mentions_are_checked_against_the_scene(text: str, hallucinated: int, recall: float) -> None:
    check = judge_description(SCENE, text)
    assert check.hallucinated_mentions == hallucinated
    assert check.hallucinated == (hallucinated > 0)
    assert check.recall == pytest.approx(recall)


def test_a_description_of_another_scene_is_mostly_hallucinated() -> None:
    """The metric separates right from wrong descriptions: describing a different random scene is
    hallucinated far more often than describing the right one (never)."""
    rng = random.Random(0)
    wrong = []
    for _ in range(200):
        scene, other = random_scene(rng), random_scene(rng)
        wrong.append(judge_description(scene_objects(scene), describe_scene(other, rng)))
    summary = summarize(wrong)
    assert summary.descriptions == 200
    assert summary.rate > 0.8 and summary.mentions > 1.0 and summary.recall < 0.5


def test_summarize_means_over_descriptions() -> None:
    checks = [
        judge_description(SCENE, "I see a red circle."),
        judge_description(SCENE, "I see a yellow square and a red triangle."),
    ]
    summary = summarize(checks)
    assert (summary.rate, summary.mentions, summary.recall) == (0.5, 1.0, 0.125)
    assert summarize([]).descriptions == 0


def test_the_describe_task_writes_scenes_the_metric_reads(tmp_path) -> None:
    record = TASKS["describe"].generate(1, 0, tmp_path)[0]
    assert len(scene_objects(record.meta["scene"])) == len(record.meta["scene"])


@pytest.mark.parametrize(
    ("scene", "where"),
    [
        ("a red circle", "meta.scene:"),
        ([], "meta.scene:"),
        ([{"colour": "red", "shape": "circle"}, {"colour": "purple", "shape": "circle"}], "meta.scene[1]:"),
        ([{"colour": "red"}], "meta.scene[0]:"),
    ],
)
def test_a_malformed_scene_is_refused_by_name(scene: object, where: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(where)):
        scene_objects(scene)
