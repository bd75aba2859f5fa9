"""Held-out evaluation: generate, extract the final answer, verify → accuracy (and pass@k)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from mpo.data.records import PromptRecord
from mpo.models.generate import Sampling, TransformersGenerator
from mpo.services.reward.answers import Extraction, extract_final_answer
from mpo.services.reward.verify import answers_match


def is_correct(response: str, record: PromptRecord) -> bool:
    return _matches(extract_final_answer(response), record)


def _matches(extraction: Extraction, record: PromptRecord) -> bool:
    return (
        extraction.answer is not None
        and record.answer is not None
        and answers_match(extraction.answer, record.answer, record.choices)
    )


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
            "per_task": {task: round(value, 4) for task, value in self.per_task.items()},
        }


def evaluate(generator: TransformersGenerator, records: Sequence[PromptRecord], sampling: Sampling) -> EvalResult:
    graded = [record for record in records if record.answer is not None]
    if not graded:
        raise ValueError("evaluation needs records with a ground-truth answer")
    responses = generator.generate(graded, sampling)
    correct_by_task: dict[str, list[float]] = defaultdict(list)
    any_correct, unparsable, correct_total = 0, 0, 0.0
    for record, samples in zip(graded, responses, strict=True):
        extractions = [extract_final_answer(text) for text in samples]  # once per sample
        verdicts = [_matches(extraction, record) for extraction in extractions]
        unparsable += sum(not extraction.parsable for extraction in extractions)
        fraction = sum(verdicts) / len(verdicts)
        correct_total += fraction
        any_correct += any(verdicts)
        correct_by_task[record.task].append(fraction)
    return EvalResult(
        prompts=len(graded),
        samples_per_prompt=sampling.n,
        accuracy=correct_total / len(graded),
        pass_at_k=any_correct / len(graded),
        unparsable=unparsable / (len(graded) * sampling.n),
        per_task={task: sum(v) / len(v) for task, v in sorted(correct_by_task.items())},
    )
