"""`shapes` (counting and multiple-choice questions about a scene) and `describe` (open-ended).

Why these question types: they span easy (count all shapes, name the colour of the only triangle)
to hard (count one colour-shape combination, compare two counts, find the most frequent colour),
and their demonstrations can list the scene in any order and filter it in more than one way.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path
from typing import Any

from mpo.data.records import PromptRecord
from mpo.data.tasks._common import derive_seed, option_letter, options_suffix
from mpo.data.tasks.scenes import (
    COLOURS,
    PLURALS,
    SHAPES,
    Scene,
    describe_scene,
    random_scene,
    render_scene,
    save_png,
    scene_key,
)

# --- difficulty knobs -------------------------------------------------------------------------------
#: Relative frequency of each question type (roughly easy to hard).
QUESTION_WEIGHTS: dict[str, float] = {
    "count_all": 1.0,
    "shape_colour": 1.5,
    "count_colour": 1.5,
    "count_shape": 1.5,
    "compare_shape": 1.0,
    "compare_colour": 1.0,
    "most_colour": 1.0,
    "count_colour_shape": 1.0,
}
#: Chance that a count question asks about a colour / shape that is actually in the scene (else any,
#: so that 0 is sometimes the answer).
PRESENT_P = 0.75
#: Chance that a demonstration first lists the whole scene before answering.
LIST_SCENE_P = 0.6
#: Number of options of colour multiple-choice questions.
COLOUR_OPTION_COUNTS = (3, 4)

DESCRIBE_QUESTIONS = ("Describe the image.", "What do you see in the image?", "Describe the shapes in the image.")

Question = tuple[str, str, list[str] | None, dict[str, Any]]  # question, answer, choices, params


def _colour_options(rng: random.Random, correct: str) -> list[str]:
    others = [c for c in COLOURS if c != correct]
    options = [correct, *rng.sample(others, rng.choice(COLOUR_OPTION_COUNTS) - 1)]
    rng.shuffle(options)
    return options


def _yes_no(rng: random.Random) -> list[str]:
    return ["yes", "no"] if rng.random() < 0.5 else ["no", "yes"]


def _pick(rng: random.Random, present: list[str], universe: tuple[str, ...] | list[str]) -> str:
    return rng.choice(present) if present and rng.random() < PRESENT_P else rng.choice(list(universe))


def _ask(qtype: str, scene: Scene, rng: random.Random) -> Question | None:
    """One question of `qtype` about `scene`, or None when the scene does not suit it."""
    colours = Counter(s["colour"] for s in scene)
    shapes = Counter(s["shape"] for s in scene)
    if qtype == "count_all":
        return "How many shapes are there?", str(len(scene)), None, {}
    if qtype == "count_colour":
        colour = _pick(rng, sorted(colours), list(COLOURS))
        return f"How many {colour} shapes are there?", str(colours[colour]), None, {"colour": colour}
    if qtype == "count_shape":
        shape = _pick(rng, sorted(shapes), SHAPES)
        return f"How many {PLURALS[shape]} are there?", str(shapes[shape]), None, {"shape": shape}
    if qtype == "count_colour_shape":
        pairs = sorted({(s["colour"], s["shape"]) for s in scene})
        colour, shape = (
            rng.choice(pairs) if rng.random() < PRESENT_P else (rng.choice(list(COLOURS)), rng.choice(SHAPES))
        )
        n = sum(1 for s in scene if s["colour"] == colour and s["shape"] == shape)
        return f"How many {colour} {PLURALS[shape]} are there?", str(n), None, {"colour": colour, "shape": shape}
    if qtype in ("compare_shape", "compare_colour"):
        counts, universe = (shapes, SHAPES) if qtype == "compare_shape" else (colours, tuple(COLOURS))
        first, second = rng.sample(list(universe), 2)
        if counts[first] + counts[second] == 0:
            return None  # "0 is not more than 0" teaches nothing
        yes = counts[first] > counts[second]
        if yes != (rng.random() < 0.5):  # keep yes and no equally likely; the caller draws a new scene
            return None
        choices = _yes_no(rng)
        if qtype == "compare_shape":
            text = f"Are there more {PLURALS[first]} than {PLURALS[second]}?"
        else:
            text = f"Are there more {first} shapes than {second} shapes?"
        answer = option_letter(choices.index("yes" if yes else "no"))
        return f"{text} {options_suffix(choices)}", answer, choices, {"first": first, "second": second}
    if qtype == "most_colour":
        ranked = colours.most_common()
        if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
            return None  # a tie has no single answer
        choices = _colour_options(rng, ranked[0][0])
        text = f"Which colour appears most often? {options_suffix(choices)}"
        return text, option_letter(choices.index(ranked[0][0])), choices, {}
    if qtype == "shape_colour":
        single = [shape for shape in SHAPES if shapes[shape] == 1]
        if not single:
            return None
        shape = rng.choice(single)
        colour = next(s["colour"] for s in scene if s["shape"] == shape)
        choices = _colour_options(rng, colour)
        text = f"What colour is the {shape}? {options_suffix(choices)}"
        return text, option_letter(choices.index(colour)), choices, {"shape": shape}
    raise ValueError(f"unknown question type {qtype!r}")


def _shuffled(items: list[Any], rng: random.Random) -> list[Any]:
    items = list(items)
    rng.shuffle(items)
    return items


def _listed(words: list[str]) -> str:
    return ", ".join(words) if words else "none"


def _demo_body(
    qtype: str, params: dict[str, Any], scene: Scene, choices: list[str] | None, answer: str, rng: random.Random
) -> list[str]:
    """The reasoning sentences after the optional scene listing."""
    if qtype == "count_all":
        return [f"That is {len(scene)}."]
    if qtype == "count_colour":
        colour = params["colour"]
        found = [s["shape"] for s in _shuffled(scene, rng) if s["colour"] == colour]
        return [f"{colour.capitalize()} shapes: {_listed(found)}.", f"That is {len(found)}."]
    if qtype == "count_shape":
        shape = params["shape"]
        found = [s["colour"] for s in _shuffled(scene, rng) if s["shape"] == shape]
        return [f"{PLURALS[shape].capitalize()}: {_listed(found)}.", f"That is {len(found)}."]
    if qtype == "count_colour_shape":
        colour, shape = params["colour"], params["shape"]
        n = sum(1 for s in scene if s["colour"] == colour and s["shape"] == shape)
        if rng.random() < 0.5:  # filter by colour first
            found = [s["shape"] for s in _shuffled(scene, rng) if s["colour"] == colour]
            first = f"{colour.capitalize()} shapes: {_listed(found)}."
        else:  # filter by shape first
            found = [s["colour"] for s in _shuffled(scene, rng) if s["shape"] == shape]
            first = f"{PLURALS[shape].capitalize()}: {_listed(found)}."
        return [first, f"{colour.capitalize()} {PLURALS[shape]}: {n}."]
    assert choices is not None
    option = f"option ({answer})"
    if qtype in ("compare_shape", "compare_colour"):
        key = "shape" if qtype == "compare_shape" else "colour"
        first, second = params["first"], params["second"]
        a = sum(1 for s in scene if s[key] == first)
        b = sum(1 for s in scene if s[key] == second)

        def label(name: str) -> str:
            return PLURALS[name].capitalize() if key == "shape" else f"{name.capitalize()} shapes"

        counts = [f"{label(first)}: {a}.", f"{label(second)}: {b}."]
        verdict = f"{a} is more than {b}, so yes" if a > b else f"{a} is not more than {b}, so no"
        return [*_shuffled(counts, rng), f"{verdict}, {option}."]
    if qtype == "most_colour":
        colours = Counter(s["colour"] for s in scene)
        best = choices[ord(answer) - ord("A")]
        counts = [f"{c.capitalize()}: {colours[c]}." for c in _shuffled(choices, rng)]
        return [*counts, f"{best.capitalize()} appears most often, {option}."]
    if qtype == "shape_colour":
        shape = params["shape"]
        colour = next(s["colour"] for s in scene if s["shape"] == shape)
        return [f"The {shape} is {colour}, {option}."]
    raise ValueError(f"unknown question type {qtype!r}")


def _write_image(scene: Scene, image_dir: Path | None, record_id: str) -> list[Path]:
    if image_dir is None:
        raise ValueError("image tasks need an image_dir to write their PNG files into")
    path = image_dir.resolve() / f"{record_id}.png"
    save_png(render_scene(scene), path)
    return [path]


class ShapesTask:
    """Questions about a rendered scene, with ground truth (a count, or an option letter)."""

    name = "shapes"
    has_images = True
    bootstrap_ema_decay = 0.98  # the last iterate flips multiple-choice answers (stability check moved 3 points)

    def sample(self, rng: random.Random) -> tuple[Scene, str, Question]:
        qtype = rng.choices(list(QUESTION_WEIGHTS), weights=list(QUESTION_WEIGHTS.values()))[0]
        while True:  # the question type is drawn first so that the mix follows QUESTION_WEIGHTS
            scene = random_scene(rng)
            asked = _ask(qtype, scene, rng)
            if asked is not None:
                return scene, qtype, asked

    def generate(self, n: int, seed: int, image_dir: Path | None) -> list[PromptRecord]:
        records = []
        for i in range(n):
            rng = random.Random(derive_seed(self.name, seed, i))
            scene, qtype, (question, answer, choices, params) = self.sample(rng)
            record_id = f"{self.name}-{seed}-{i:06d}"
            records.append(
                PromptRecord(
                    id=record_id,
                    question=question,
                    images=_write_image(scene, image_dir, record_id),
                    answer=answer,
                    choices=choices,
                    task=self.name,
                    meta={"scene": scene, "qtype": qtype, "params": params},
                )
            )
        return records

    def demonstration(self, record: PromptRecord, rng: random.Random) -> str | None:
        scene, qtype = record.meta["scene"], record.meta["qtype"]
        body = _demo_body(qtype, record.meta["params"], scene, record.choices, str(record.answer), rng)
        if qtype == "count_all" or rng.random() < LIST_SCENE_P:
            body = [describe_scene(scene, rng), *body]
        return " ".join(body) + f"\nFinal answer: {record.answer}"

    def key(self, record: PromptRecord) -> str:
        return record.question + "\n" + scene_key(record.meta["scene"])


class DescribeTask:
    """Open-ended descriptions of the same kind of scene; no ground truth for the verifiers (labelled by
    DropoutNTP), but the scene is known: it gives the warm start a reference description to imitate and
    the held-out evaluation its hallucination metric."""

    name = "describe"
    has_images = True
    bootstrap_ema_decay = 0.0  # no ground truth: never bootstrapped on its own

    def generate(self, n: int, seed: int, image_dir: Path | None) -> list[PromptRecord]:
        records = []
        for i in range(n):
            rng = random.Random(derive_seed(self.name, seed, i))
            scene = random_scene(rng)
            record_id = f"{self.name}-{seed}-{i:06d}"
            records.append(
                PromptRecord(
                    id=record_id,
                    question=rng.choice(DESCRIBE_QUESTIONS),
                    images=_write_image(scene, image_dir, record_id),
                    task=self.name,
                    meta={"scene": scene},
                )
            )
        return records

    def demonstration(self, record: PromptRecord, rng: random.Random) -> str | None:
        """A reference description (every shape, in a random order), with no "Final answer" line."""
        return describe_scene(record.meta["scene"], rng)

    def key(self, record: PromptRecord) -> str:
        """The scene alone: one picture must not be in both splits under two phrasings."""
        return scene_key(record.meta["scene"])
