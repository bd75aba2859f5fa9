"""Built-in tasks: determinism, disjoint splits, independently recomputed answers, and demonstrations
that reach the right answer by more than one line of reasoning."""

from __future__ import annotations

import ast
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from mpo.data.records import PromptRecord
from mpo.data.tasks import TASKS, make_splits
from mpo.data.tasks.arith import derivation_holds, question_expression, render
from mpo.data.tasks.scenes import CANVAS, COLOURS, SIZE_RANGE
from mpo.data.tasks.shapes_steps import derivation_holds as shapes_derivation_holds
from mpo.data.tasks.shapes_steps import question_type, scene_listing
from mpo.grading.answers import extract_final_answer
from mpo.grading.hallucination import judge_description, scene_objects
from mpo.grading.verify import answers_match

IMAGE_TASKS = [name for name, task in TASKS.items() if task.has_images]
TRUTH_TASKS = [name for name in TASKS if name != "describe"]
PLURAL = {"circles": "circle", "squares": "square", "triangles": "triangle"}
COLOUR_WORDS = "|".join(COLOURS)
SHAPE_WORDS = "|".join(PLURAL)


def _comparable(records: list[PromptRecord]) -> list[dict[str, Any]]:
    """Records without their (directory-dependent) image paths."""
    return [{**r.model_dump(exclude={"images"}), "image_names": [p.name for p in r.images]} for r in records]


def _png_bytes(records: list[PromptRecord]) -> list[bytes]:
    return [path.read_bytes() for r in records for path in r.images]


# --- an evaluator that shares no code with the generator ------------------------------------------


def _safe_eval(node: ast.AST) -> int:
    if isinstance(node, ast.Expression):
        return _safe_eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub | ast.Mult):
        left, right = _safe_eval(node.left), _safe_eval(node.right)
        if isinstance(node.op, ast.Add):
            return left + right
        return left - right if isinstance(node.op, ast.Sub) else left * right
    raise ValueError(f"unexpected syntax {ast.dump(node)}")


def _question_expression(question: str) -> str:
    match = re.fullmatch(r"(?:What is|Compute|Calculate) ([0-9+\-*() ]+)[?.]", question)
    assert match, question
    return match.group(1)


def _binops(tree: ast.AST) -> int:
    return sum(isinstance(node, ast.BinOp) for node in ast.walk(tree))


def _shapes_truth(record: PromptRecord) -> str:
    """Answer recomputed from the scene by reading the question text."""
    scene, question = record.meta["scene"], record.question
    colours = Counter(s["colour"] for s in scene)
    shapes = Counter(s["shape"] for s in scene)
    options = re.findall(r"\(([A-D])\) (\w+)", question)
    if record.choices is not None:
        assert [text for _, text in options] == record.choices
        assert [letter for letter, _ in options] == ["A", "B", "C", "D"][: len(options)]
        assert question.endswith(f"({options[-1][0]}) {options[-1][1]}")

    def letter(text: str) -> str:
        assert record.choices is not None
        return "ABCD"[record.choices.index(text)]

    if question == "How many shapes are there?":
        return str(len(scene))
    if m := re.fullmatch(rf"How many ({COLOUR_WORDS}) shapes are there\?", question):
        return str(colours[m.group(1)])
    if m := re.fullmatch(rf"How many ({SHAPE_WORDS}) are there\?", question):
        return str(shapes[PLURAL[m.group(1)]])
    if m := re.fullmatch(rf"How many ({COLOUR_WORDS}) ({SHAPE_WORDS}) are there\?", question):
        wanted = (m.group(1), PLURAL[m.group(2)])
        return str(sum((s["colour"], s["shape"]) == wanted for s in scene))
    if m := re.match(rf"Are there more ({SHAPE_WORDS}) than ({SHAPE_WORDS})\? ", question):
        return letter("yes" if shapes[PLURAL[m.group(1)]] > shapes[PLURAL[m.group(2)]] else "no")
    if m := re.match(rf"Are there more ({COLOUR_WORDS}) shapes than ({COLOUR_WORDS}) shapes\? ", question):
        return letter("yes" if colours[m.group(1)] > colours[m.group(2)] else "no")
    if question.startswith("Which colour appears most often? "):
        (best, n), *rest = colours.most_common()
        assert all(count < n for _, count in rest), "the most frequent colour must be unique"
        return letter(best)
    if m := re.match(rf"What colour is the ({'|'.join(PLURAL.values())})\? ", question):
        only = [s for s in scene if s["shape"] == m.group(1)]
        assert len(only) == 1, "the question must name a shape that occurs exactly once"
        return letter(only[0]["colour"])
    raise AssertionError(f"unrecognised question {question!r}")


# --- determinism ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TASKS))
def test_generate_is_deterministic_and_seed_dependent(name: str, tmp_path: Path) -> None:
    task = TASKS[name]
    first = task.generate(40, 7, tmp_path / "a")
    again = task.generate(40, 7, tmp_path / "b")
    other = task.generate(40, 8, tmp_path / "c")
    assert _comparable(first) == _comparable(again)
    assert _png_bytes(first) == _png_bytes(again)
    assert [r.meta for r in first] != [r.meta for r in other]
    assert len({r.question + str(r.meta) for r in first} & {r.question + str(r.meta) for r in other}) < 10
    assert _comparable(task.generate(10, 7, tmp_path / "d")) == _comparable(first)[:10], "item i must not depend on n"
    if task.has_images:
        assert all(p.is_absolute() and p.parent == (tmp_path / "a").resolve() for r in first for p in r.images)
        assert _png_bytes(first) != _png_bytes(other)
    else:
        assert all(not r.images for r in first)


@pytest.mark.parametrize("name", list(TASKS))
def test_make_splits_is_deterministic(name: str, tmp_path: Path) -> None:
    first = make_splits(name, seed=3, train=60, heldout=30, out_dir=tmp_path / "a")
    again = make_splits(name, seed=3, train=60, heldout=30, out_dir=tmp_path / "b")
    for split in ("train", "heldout"):
        assert _comparable(first[split]) == _comparable(again[split])
        assert _png_bytes(first[split]) == _png_bytes(again[split])


# --- splits -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TASKS))
def test_splits_are_disjoint_with_unique_ids(name: str, tmp_path: Path) -> None:
    task = TASKS[name]
    splits = make_splits(name, seed=11, train=400, heldout=200, out_dir=tmp_path)
    train, heldout = splits["train"], splits["heldout"]
    assert (len(train), len(heldout)) == (400, 200)
    for split, records in splits.items():
        assert [r.id for r in records] == [f"{name}-{split}-{i:06d}" for i in range(len(records))]
        assert all(r.task == name for r in records)

    def identities(records: list[PromptRecord]) -> set[str]:
        if name == "arith":
            return {r.meta["expression"] for r in records}
        return {repr((r.question, r.meta["scene"])) for r in records}

    assert not identities(train) & identities(heldout)
    assert not {r.question for r in train} & {r.question for r in heldout} or task.has_images
    assert not {task.key(r) for r in train} & {task.key(r) for r in heldout}
    assert len({task.key(r) for r in heldout}) == len(heldout), "held-out items are unique"
    if name == "describe":  # one picture is never in both splits, whatever the phrasing
        assert not {repr(r.meta["scene"]) for r in train} & {repr(r.meta["scene"]) for r in heldout}
    if task.has_images:
        image_dir = (tmp_path / "images").resolve()
        listed = {p for r in train + heldout for p in r.images}
        assert listed == set(image_dir.iterdir()), "exactly the selected images, no staging leftovers"
        assert all(r.images == [image_dir / f"{r.id}.png"] for r in train + heldout)
    else:
        assert not (tmp_path / "images").exists()


# --- answers recomputed independently -------------------------------------------------------------


def test_arith_answers_and_structure() -> None:
    records = TASKS["arith"].generate(1000, 2, None)
    for r in records:
        expression = _question_expression(r.question)
        assert expression == r.meta["expression"]
        tree = ast.parse(expression, mode="eval")
        assert str(_safe_eval(tree)) == r.answer
        assert _binops(tree) == r.meta["num_ops"]
        assert 1 <= r.meta["num_ops"] <= 4
        assert r.choices is None and not r.images
        numbers = [int(n) for n in re.findall(r"\d+", expression)]
        assert all(1 <= n <= 60 for n in numbers)
        assert 0 <= int(r.answer) < 1000
    share_hard = sum(r.meta["num_ops"] >= 3 for r in records) / len(records)
    assert 0.30 <= share_hard <= 0.70, share_hard
    assert sum("(" in r.question for r in records) >= 50, "parentheses occur"
    assert {op for r in records for op in "+-*" if op in r.meta["expression"]} == {"+", "-", "*"}
    small = sum(all(int(n) <= 20 for n in re.findall(r"\d+", r.meta["expression"])) for r in records)
    assert small / len(records) >= 0.6, "operands are mostly 1-20"


@pytest.mark.parametrize("name", IMAGE_TASKS)
def test_scene_images_match_meta(name: str, tmp_path: Path) -> None:
    records = TASKS[name].generate(150, 4, tmp_path)
    for r in records:
        scene = r.meta["scene"]
        assert 1 <= len(scene) <= 6
        image = Image.open(r.images[0])
        assert image.mode == "RGB" and image.size == (CANVAS, CANVAS)
        assert image.getpixel((0, 0)) == (255, 255, 255)
        for s in scene:
            assert SIZE_RANGE[0] >= 10 and SIZE_RANGE[0] <= s["size"] <= SIZE_RANGE[1]
            assert image.getpixel((s["x"], s["y"])) == COLOURS[s["colour"]], (r.id, s)
        boxes = [(s["x"] - s["size"] // 2, s["y"] - s["size"] // 2, s["size"]) for s in scene]
        for i, (ax, ay, a) in enumerate(boxes):
            assert ax >= 0 and ax + a <= CANVAS and ay >= 0 and ay + a <= CANVAS
            for bx, by, b in boxes[i + 1 :]:
                assert ax + a <= bx or bx + b <= ax or ay + a <= by or by + b <= ay, "shapes overlap"
        if name == "describe":
            assert r.answer is None and r.choices is None
        else:
            assert r.answer == _shapes_truth(r), r.question


def test_shapes_question_mix(tmp_path: Path) -> None:
    records = TASKS["shapes"].generate(400, 9, tmp_path)
    kinds = Counter(r.meta["qtype"] for r in records)
    assert len(kinds) == 8 and min(kinds.values()) >= 15, kinds
    multiple_choice = [r for r in records if r.choices]
    assert all(re.fullmatch(r"[A-D]", r.answer or "") for r in multiple_choice)
    assert len({r.answer for r in multiple_choice}) >= 3, "the right option is not always in one place"
    assert all(r.answer.isdigit() for r in records if not r.choices)


# --- demonstrations ---------------------------------------------------------------------------------


def _check_arith_equations(demo: str) -> None:
    """Every step a op b = c is true arithmetic."""
    steps = re.findall(r"(\d+) ([+\-*]) (\d+) = (\d+)", demo)
    assert steps, demo
    for a, op, b, c in steps:
        assert _safe_eval(ast.parse(f"{a} {op} {b}", mode="eval")) == int(c), demo


@pytest.mark.parametrize("name", TRUTH_TASKS)
def test_demonstrations_reach_the_answer(name: str, tmp_path: Path) -> None:
    task = TASKS[name]
    records = task.generate(200, 5, tmp_path)
    for i, r in enumerate(records):
        demo = task.demonstration(r, random.Random(i))
        assert demo is not None
        extraction = extract_final_answer(demo)
        assert extraction.answer is not None, (demo, extraction.problem)
        assert answers_match(extraction.answer, r.answer or "", r.choices), (r.question, r.answer, demo)
        *reasoning, last = demo.split("\n")
        assert last == f"Final answer: {r.answer}" and "".join(reasoning).strip()
        if name == "arith":
            _check_arith_equations(demo)
            assert demo.count(" = ") == r.meta["num_ops"], "one line per operation"


@pytest.mark.parametrize("name", TRUTH_TASKS)
def test_demonstrations_vary_with_the_rng(name: str, tmp_path: Path) -> None:
    task = TASKS[name]
    records = task.generate(20, 6, tmp_path)
    batch_a = [task.demonstration(r, random.Random(100 + i)) for i, r in enumerate(records)]
    batch_b = [task.demonstration(r, random.Random(200 + i)) for i, r in enumerate(records)]
    assert batch_a != batch_b
    for r in records:  # each item with a choice of reasoning has several lines across rngs
        variants = {task.demonstration(r, random.Random(seed)) for seed in range(12)}
        if name == "shapes" or r.meta["num_ops"] >= 2:
            assert len(variants) >= 2, r.question


def test_arith_demonstrations_use_other_orders_than_the_textbook_one() -> None:
    task = TASKS["arith"]
    records = [r for r in task.generate(200, 12, None) if r.meta["num_ops"] >= 3]
    other_orders = 0
    for i, r in enumerate(records):
        demo = task.demonstration(r, random.Random(i))
        assert demo is not None
        steps = [f"{a} {op} {b} = {c}" for a, op, b, c in re.findall(r"(\d+) ([+\-*]) (\d+) = (\d+)", demo)]
        other_orders += steps != r.meta["steps"]
    assert other_orders >= len(records) // 3


LUCKY_ANSWERS = [  # right final answers from the demo's own samples, reached through a wrong derivation
    ("What is 11 + 4 * 4?", "4 * 4 = 16. Finally, 10 + 17 = 27."),  # operands the expression does not hold
    ("Compute 2 + 24 + 6.", "24 + 24 = 48. So 28 + 4 = 32."),
    ("What is 7 * 6 - 4?", "First, 7 * 6 = 48. Finally, 48 - 4 = 38."),  # a false product
    ("What is 7 * 6 - 4?", "6 * 7 = 42."),  # stops before the last operation
    ("What is 7 * 6 - 4?", "6 * 7 = 42. 4 - 42 = 38."),  # a difference with its operands swapped
    ("What is 56 + 7 - 5 - 7?", "56 + 7 = 63. Then 63 - 7 = 51. So 61 - 7 = 51."),
]


def test_arith_derivation_check_accepts_every_demonstration_and_rejects_wrong_ones() -> None:
    task = TASKS["arith"]
    for r in task.generate(400, 13, None):
        expr = question_expression(r.question)
        assert render(expr) == r.meta["expression"]
        for seed in range(3):
            demo = task.demonstration(r, random.Random(seed))
            assert demo is not None
            rationale = demo.split("Final answer:")[0]
            assert derivation_holds(expr, rationale), demo
            first = re.search(r"= (\d+)", rationale)
            assert first is not None
            off_by_one = rationale[: first.start(1)] + str(int(first[1]) + 1) + rationale[first.end(1) :]
            assert not derivation_holds(expr, off_by_one), off_by_one
            assert not derivation_holds(expr, rationale.rsplit(" = ", 1)[0]), "the last step is missing"
    assert derivation_holds(question_expression("What is 7 * 6 - 4?"), "6 * 7 = 42. 42 - 4 = 38.")
    for question, rationale in LUCKY_ANSWERS:
        assert not derivation_holds(question_expression(question), rationale), rationale
    with pytest.raises(ValueError, match="no arithmetic expression"):
        question_expression("What colour is the square?")


#: Right final answers the warm-started shapes policy wrote in online rounds, with the reasoning it gave.
SHAPES_LUCKY_ANSWERS = [
    ("Are there more circles than squares? (A) yes (B) no",
     "Squares: 1. Circles: 1. 1 is more than 1, so yes, option (A).", "A"),
    ("Are there more circles than triangles? (A) yes (B) no",
     "I see a blue square, a red circle, a yellow triangle and a blue square. Circles: 1. Triangles: 0. "
     "2 is more than 0, so yes, option (A).", "A"),
    ("Are there more blue shapes than green shapes? (A) no (B) yes",
     "Green shapes: 1. Green shapes: 1. 1 is more than 1, so yes, option (B).", "B"),
    ("What colour is the triangle? (A) green (B) red (C) blue (D) yellow",
     "Green: 0. The circle is red, option (A).", "A"),
    ("What colour is the circle? (A) yellow (B) blue (C) green", "The circle is yellow, option (B).", "B"),
    ("What colour is the square? (A) yellow (B) green (C) blue (D) red",
     "I see a yellow square. The square is blue, option (D).", "D"),
    ("Which colour appears most often? (A) green (B) red (C) yellow (D) blue",
     "Red: 1. Blue: 1. Blue: 1. Red: 3. Yellow appears most often, option (B).", "B"),
    ("How many triangles are there?", "I see a blue square and a red square. Triangles: blue, blue. That is 2.", "2"),
    ("How many yellow shapes are there?", "Blue shapes: triangle, square. That is 2.", "2"),
    ("How many squares are there?", "Blue shapes: circle. Yellow squares: 1.", "1"),
    ("How many shapes are there?", "That is 3.", "3"),
]  # fmt: skip


def test_shapes_derivation_check_accepts_every_demonstration_and_rejects_lucky_answers(tmp_path: Path) -> None:
    """The shapes step check: every demonstration (all eight question types, with and without the scene
    listed) derives its answer; the same reasoning does not derive any other answer or lose its last step;
    and the self-contradicting right answers a real policy wrote do not pass."""
    task = TASKS["shapes"]
    seen_types, listed = Counter(), Counter()
    for r in task.generate(400, 5, tmp_path):
        qtype, _ = question_type(r.question)
        assert qtype == r.meta["qtype"]
        seen_types[qtype] += 1
        other = str(int(r.answer) + 1) if r.answer.isdigit() else chr(ord(r.answer) + 1)
        for seed in range(3):
            demo = task.demonstration(r, random.Random(seed))
            assert demo is not None
            rationale = extract_final_answer(demo).rationale
            assert shapes_derivation_holds(r.question, rationale, r.answer), demo
            assert not shapes_derivation_holds(r.question, rationale, other), (demo, other)
            without_conclusion = " ".join(re.split(r"(?<=\.)\s+", rationale.strip())[:-1])
            assert not shapes_derivation_holds(r.question, without_conclusion, r.answer), demo
            listing = scene_listing(rationale)  # what the demonstration says it sees: the scene, when it lists
            listed[listing is not None] += 1
            assert listing is None or Counter(listing) == Counter(scene_objects(r.meta["scene"])), demo
    assert len(seen_types) == 8 and listed[True] and listed[False]
    assert shapes_derivation_holds("How many red circles are there?", "Circles: red, blue, red. Red circles: 2.", "2")
    assert not shapes_derivation_holds(
        "How many red circles are there?", "I see a red circle. Circles: red, blue, red. Red circles: 2.", "2"
    ), "the counts must be those of the scene the rationale listed"
    for question, rationale, answer in SHAPES_LUCKY_ANSWERS:
        assert not shapes_derivation_holds(question, rationale, answer), rationale
    with pytest.raises(ValueError, match="not a shapes question"):
        question_type("What is 7 * 6 - 4?")


def test_describe_has_no_ground_truth_but_a_reference_description(tmp_path: Path) -> None:
    task = TASKS["describe"]
    records = task.generate(30, 1, tmp_path)
    assert len({r.question for r in records}) >= 2
    assert all(r.answer is None and r.choices is None for r in records)
    for record in records:  # what the warm start imitates: every shape, nothing else, no final answer
        reference = task.demonstration(record, random.Random(0))
        assert reference is not None and "Final answer" not in reference
        check = judge_description(scene_objects(record.meta["scene"]), reference)
        assert not check.hallucinated and check.recall == 1.0, reference
