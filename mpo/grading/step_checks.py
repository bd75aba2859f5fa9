"""Step checks: does the rationale itself hold, not just its final answer? An optional, stricter notion
of correct, per task.

Why: the correctness pipeline (docs/design.md §2) looks only at the final answer, so a sample that reaches the
right number through a false step or a made-up operand ("What is 11 + 4 * 4?" answered "4 * 4 = 16.
Finally, 10 + 17 = 27.") is labelled correct, and the SFT term then teaches it. On the built-in arith
task 15-25% of the chosen answers were such lucky answers (docs/results.md). A task mapped to a step
check in `RewardConfig.task_step_checks` marks them `VERDICT_WRONG_STEP`: they count as wrong for pairs
and label statistics, while evaluation still reports final-answer accuracy.

Adding a check: a class with a unique `name` and `check(question, rationale) -> bool`, registered with
`register_step_check`.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from mpo.data.tasks.arith import derivation_holds, question_expression


@runtime_checkable
class StepCheck(Protocol):
    name: str

    def check(self, question: str, rationale: str) -> bool:
        """Whether the rationale's steps hold for the question; ValueError when the question is unusable
        (a data bug must not silently fail every sample). Labelling calls it once per prompt with an empty
        rationale to check the question before judging any sample."""
        ...


class ArithStepsCheck:
    """The rationale must be a complete step-by-step evaluation of the question's expression, as the
    arith demonstrations write one ("a op b = c", any valid order, operands of + and * either way)."""

    name = "arith_steps"

    def check(self, question: str, rationale: str) -> bool:
        return derivation_holds(question_expression(question), rationale)


STEP_CHECKS: dict[str, StepCheck] = {}


def register_step_check(check: StepCheck) -> StepCheck:
    if check.name in STEP_CHECKS:
        raise ValueError(f"the step check name {check.name!r} is taken")
    STEP_CHECKS[check.name] = check
    return check


register_step_check(ArithStepsCheck())
