"""Judging a response: answer extraction, then the task's verifier — a built-in one by name
(`verifiers.py`) or a plug-in (`mpo/plugins.py`) — in one place (`Grader`), so that the reward service's
labelling and held-out evaluation judge a response the same way under the same `RewardConfig`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from mpo.data.records import PromptRecord
from mpo.grading.answers import Extraction, compile_answer_pattern, extract_final_answer
from mpo.grading.verifiers import AUTO, verify_with
from mpo.plugins import VerifierFn, as_score, load_verifier

if TYPE_CHECKING:
    from mpo.config import RewardConfig

#: Longest part of a plug-in's exception quoted in its error (errors travel in a size-limited gRPC trailer).
_QUOTED_CHARS = 200

Verdict = Literal["correct", "wrong", "unparsable", "no_ground_truth"]


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    extraction: Extraction
    #: What judged: a built-in verifier's name or a plug-in's spec; "" when nothing did (no ground truth,
    #: or no answer for a built-in verifier to read).
    verifier: str = ""

    @property
    def correct(self) -> bool:
        return self.verdict == "correct"


class VerifierFailed(Exception):
    """A plug-in verifier raised, or returned something other than a bool or a score in [0, 1]: a fault of the
    deployment's code, not of the sample or the request."""

    def __init__(self, task: str, spec: str, problem: str) -> None:
        super().__init__(f"verifier {spec!r} of task {task!r} {problem}")


class Grader:
    """Extraction (with the configured answer pattern) and the task's verifier (plug-in, else the built-in
    one `task_verifiers` names, else "auto"). Plug-ins judge the whole response, so their samples are never
    unparsable; a score of at least `correct_threshold` is correct. Records without a ground truth are not
    judged. With no arguments: "auto" for every task and no pattern."""

    def __init__(
        self,
        *,
        task_verifiers: Mapping[str, str] | None = None,
        plugins: Mapping[str, str] | None = None,
        answer_pattern: str | None = None,
        correct_threshold: float = 0.5,
    ) -> None:
        self.task_verifiers = dict(task_verifiers or {})
        self.plugins: dict[str, tuple[str, VerifierFn]] = {
            task: (spec, load_verifier(spec)) for task, spec in (plugins or {}).items()
        }
        self.pattern = compile_answer_pattern(answer_pattern) if answer_pattern is not None else None
        self.correct_threshold = correct_threshold

    @classmethod
    def from_config(cls, config: RewardConfig) -> Grader:
        """The grader `config` describes; ValueError when a plug-in cannot be loaded here (the config check
        loaded it in another process)."""
        return cls(
            task_verifiers=config.task_verifiers,
            plugins=config.verifiers,
            answer_pattern=config.answer_pattern,
            correct_threshold=config.correct_threshold,
        )

    def extract(self, response: str) -> Extraction:
        return extract_final_answer(response, self.pattern)

    def judge(self, response: str, record: PromptRecord) -> Judgement:
        """The verdict on `response`; ValueError when the record's ground truth is unusable for a built-in
        verifier, VerifierFailed when a plug-in fails."""
        extraction = self.extract(response)
        if record.answer is None:
            return Judgement("no_ground_truth", extraction)
        if record.task in self.plugins:
            spec, verifier = self.plugins[record.task]
            score = self._run_plugin(record.task, spec, verifier, response, record)
            return Judgement("correct" if score >= self.correct_threshold else "wrong", extraction, spec)
        if extraction.answer is None:
            return Judgement("unparsable", extraction)
        name = self.task_verifiers.get(record.task, AUTO)
        correct, used = verify_with(name, extraction.answer, record.answer, record.choices)
        return Judgement("correct" if correct else "wrong", extraction, used)

    @staticmethod
    def _run_plugin(task: str, spec: str, verifier: VerifierFn, response: str, record: PromptRecord) -> float:
        try:
            value = verifier(response, record)
        except Exception as exc:  # the plug-in's own failure, whatever its type
            message = str(exc) if len(str(exc)) <= _QUOTED_CHARS else str(exc)[:_QUOTED_CHARS] + "…"
            raise VerifierFailed(task, spec, f"raised {type(exc).__name__}: {message}") from exc
        try:
            return as_score(value)
        except ValueError as exc:
            raise VerifierFailed(task, spec, str(exc)) from None


def answers_match(predicted: str, truth: str, choices: list[str] | None = None) -> bool:
    """Multiple choice when there are choices, numbers when the truth is one, else normalised text;
    ValueError when the truth is unusable (e.g. names none of the choices)."""
    return verify_with(AUTO, predicted, truth, choices)[0]
