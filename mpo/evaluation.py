"""Held-out evaluation: generate, extract the final answer, verify → accuracy (and pass@k), and the
share of degenerate answers (no final answer, a repetition loop, or cut at the token limit), judged as
the controller's evaluation judges them (mpo/grading/degenerate.py).

Responses are judged by a `Grader` (mpo/grading/verify.py): built from the run's `RewardConfig`, it
applies the same extraction, task → verifier mapping and plug-in verifiers as the reward service's
labelling; without one, every task uses the "auto" verifier.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from mpo.data.records import PromptRecord
from mpo.grading.degenerate import Degeneracy
from mpo.grading.verify import Grader
from mpo.models.generate import Sampling, TransformersGenerator

_AUTO = Grader()


def is_correct(response: str, record: PromptRecord, grader: Grader | None = None) -> bool:
    return (grader or _AUTO).judge(response, record).correct


@dataclass(frozen=True)
class EvalResult:
    prompts: int
    samples_per_prompt: int
    #: Mean fraction of correct samples (greedy accuracy when samples_per_prompt == 1).
    accuracy: float
    #: Fraction of prompts with at least one correct sample (pass@k, k = samples_per_prompt).
    pass_at_k: float
    unparsable: float
    per_task: dict[str, float] = field(default_factory=dict)
    #: Fraction of correct samples per graded prompt, in the order of the records: what pairs two
    #: evaluations of the same prompts (`paired_gain`).
    per_prompt: tuple[float, ...] = ()
    #: Fraction of samples that are degenerate (`Degeneracy`: no final answer, a loop, or cut off).
    degenerate: float = 0.0

    @property
    def standard_error(self) -> float:
        return (self.accuracy * (1 - self.accuracy) / max(1, self.prompts)) ** 0.5

    def summary(self) -> dict[str, object]:
        return {
            "prompts": self.prompts,
            "samples_per_prompt": self.samples_per_prompt,
            "accuracy": round(self.accuracy, 4),
            "standard_error": round(self.standard_error, 4),
            f"pass@{self.samples_per_prompt}": round(self.pass_at_k, 4),
            "unparsable": round(self.unparsable, 4),
            "degenerate": round(self.degenerate, 4),
            "per_task": {task: round(value, 4) for task, value in self.per_task.items()},
        }


def evaluate(
    generator: TransformersGenerator,
    records: Sequence[PromptRecord],
    sampling: Sampling,
    grader: Grader | None = None,
) -> EvalResult:
    """Accuracy of `generator` on the records with a ground truth; `grader` judges (default: "auto" for
    every task). A plug-in verifier's failure propagates as `VerifierFailed`."""
    grader = grader or _AUTO
    graded = [record for record in records if record.answer is not None]
    if not graded:
        raise ValueError("evaluation needs records with a ground-truth answer")
    responses = generator.generate_outputs(graded, sampling)
    correct_by_task: dict[str, list[float]] = defaultdict(list)
    any_correct, unparsable, degenerate, correct_total = 0, 0, 0, 0.0
    per_prompt: list[float] = []
    for record, samples in zip(graded, responses, strict=True):
        judgements = [grader.judge(sample.text, record) for sample in samples]
        verdicts = [judgement.correct for judgement in judgements]
        unparsable += sum(judgement.verdict == "unparsable" for judgement in judgements)
        degenerate += sum(
            Degeneracy.of(
                sample.token_ids, truncated=sample.truncated, no_final_answer=judgement.verdict == "unparsable"
            ).degenerate
            for sample, judgement in zip(samples, judgements, strict=True)
        )
        fraction = sum(verdicts) / len(verdicts)
        correct_total += fraction
        any_correct += any(verdicts)
        correct_by_task[record.task].append(fraction)
        per_prompt.append(fraction)
    return EvalResult(
        prompts=len(graded),
        samples_per_prompt=sampling.n,
        accuracy=correct_total / len(graded),
        pass_at_k=any_correct / len(graded),
        unparsable=unparsable / (len(graded) * sampling.n),
        degenerate=degenerate / (len(graded) * sampling.n),
        per_task={task: sum(v) / len(v) for task, v in sorted(correct_by_task.items())},
        per_prompt=tuple(per_prompt),
    )


def paired_gain(before: EvalResult, after: EvalResult) -> tuple[float, float]:
    """Accuracy gain from `before` to `after` (two evaluations of the same prompts, in the same order) and
    its standard error from the per-prompt differences: each prompt's own difficulty cancels, so the
    error is what the policy change leaves, not the spread of two independent accuracies."""
    if len(before.per_prompt) != len(after.per_prompt) or not before.per_prompt:
        raise ValueError(
            f"paired gain needs two evaluations of the same prompts: {len(before.per_prompt)} vs "
            f"{len(after.per_prompt)} prompts"
        )
    differences = [b - a for a, b in zip(before.per_prompt, after.per_prompt, strict=True)]
    n = len(differences)
    mean = sum(differences) / n
    variance = sum((d - mean) ** 2 for d in differences) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(variance / n)
