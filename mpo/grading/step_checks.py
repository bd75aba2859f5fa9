"""Step checks: does the rationale itself hold, not just its final answer? An optional, stricter notion
of correct, per task.

Why: the correctness pipeline (docs/design.md §2) looks only at the final answer, so a sample that reaches the
right number through a false step or a made-up operand ("What is 11 + 4 * 4?" answered "4 * 4 = 16.
Finally, 10 + 17 = 27.") is labelled correct, and the SFT term then teaches it. On the built-in arith
task 15-25% of the chosen answers were such lucky answers (docs/results.md). A task mapped to a step
check in `RewardConfig.task_step_checks` marks them `VERDICT_WRONG_STEP`: they count as wrong for pairs
and label statistics, while evaluation still reports final-answer accuracy.

Adding a check: a class with a unique `name` and `check(question, rationale, answer) -> bool`, registered
with `register_step_check`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from mpo.data.tasks import shapes_steps
from mpo.data.tasks.arith import derivation_holds, question_expression
from mpo.grading.registry import register_named


@runtime_checkable
class StepCheck(Protocol):
    name: str

    def check(self, question: str, rationale: str, answer: str) -> bool:
        """Whether the rationale's steps hold for the question and lead to `answer`, the prompt's ground
        truth (labelling asks only about samples whose final answer matches it); ValueError when the
        question is unusable (a data bug must not silently fail every sample). Labelling calls it once per
        prompt with an empty rationale to check the question before judging any sample."""
        ...


class ArithStepsCheck:
    """The rationale must be a complete step-by-step evaluation of the question's expression, as the
    arith demonstrations write one ("a op b = c", any valid order, operands of + and * either way)."""

    name = "arith_steps"

    def check(self, question: str, rationale: str, answer: str) -> bool:
        return derivation_holds(question_expression(question), rationale)  # a complete evaluation ends at it


class ShapesStepsCheck:
    """The rationale must derive the answer in the shapes demonstrations' form, step by step, and agree
    with its own listing of the scene when it gives one (`mpo/data/tasks/shapes_steps.py`): on yes/no
    and 3-4 option questions a poorly seeing policy is right by luck on a large share of its samples."""

    name = "shapes_steps"

    def check(self, question: str, rationale: str, answer: str) -> bool:
        return shapes_steps.derivation_holds(question, rationale, answer)


STEP_CHECKS: dict[str, StepCheck] = {}


def register_step_check(check: StepCheck) -> StepCheck:
    return register_named(STEP_CHECKS, check, "step check")


register_step_check(ArithStepsCheck())
register_step_check(ShapesStepsCheck())
