"""Labels a batch of samples and builds its correctness pairs (the part of RewardService that is pure CPU).

Runs inside the labelling worker actors: each gets whole prompts with all their samples, so a prompt's
pairs never depend on how the batch was split. Counts come back as a `Tally` that merges by addition.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc

from mpo.data.records import PromptRecord
from mpo.grading.step_checks import STEP_CHECKS, StepCheck
from mpo.grading.verify import Grader, VerifierFailed
from mpo.services.reward.pairs import (
    SKIP_ALL_CORRECT,
    SKIP_ALL_WRONG,
    SKIP_CONTAINS_TRUTH,
    SKIP_EMPTY,
    SKIP_IDENTICAL,
    SKIP_NO_SAMPLES,
    LabelledSample,
    correctness_pairs,
)
from mpo.serving.validation import InvalidRequest
from mpo.v1 import common_pb2, reward_pb2

#: Reasons a prompt gave no pair, as reported in `BuildPairsResponse.skipped_prompts`.
SKIP_CODES = {
    SKIP_NO_SAMPLES: "no_samples",
    SKIP_ALL_CORRECT: "all_correct",
    SKIP_ALL_WRONG: "all_wrong",
    SKIP_IDENTICAL: "identical_responses",
    SKIP_CONTAINS_TRUTH: "wrong_answers_state_the_truth",
    SKIP_EMPTY: "empty_responses",
}


@dataclass
class Tally:
    """The counts behind `LabelStats`; adding two tallies gives the tally of both batches."""

    prompts: int = 0
    samples: int = 0
    correct: int = 0
    wrong: int = 0
    unparsable: int = 0
    wrong_step: int = 0
    prompts_all_correct: int = 0
    prompts_all_wrong: int = 0
    pairs_correctness: int = 0
    pairs_dropout_ntp: int = 0
    judged_by_task: Counter[str] = field(default_factory=Counter)
    correct_by_task: Counter[str] = field(default_factory=Counter)

    def __add__(self, other: Tally) -> Tally:
        counts = {name: getattr(self, name) + getattr(other, name) for name in _COUNT_FIELDS}
        return Tally(
            **counts,
            judged_by_task=self.judged_by_task + other.judged_by_task,
            correct_by_task=self.correct_by_task + other.correct_by_task,
        )

    def to_proto(self) -> common_pb2.LabelStats:
        return common_pb2.LabelStats(
            **{name: getattr(self, name) for name in _COUNT_FIELDS},
            accuracy_by_task={task: self.correct_by_task[task] / n for task, n in self.judged_by_task.items() if n},
        )


_COUNT_FIELDS = (
    "prompts",
    "samples",
    "correct",
    "wrong",
    "unparsable",
    "wrong_step",
    "prompts_all_correct",
    "prompts_all_wrong",
    "pairs_correctness",
    "pairs_dropout_ntp",
)


@dataclass
class LabelledBatch:
    scores: dict[tuple[str, int], reward_pb2.SampleScore]
    pairs: list[common_pb2.PreferencePair]
    skipped: dict[str, str]
    tally: Tally


_VERDICTS = {
    "correct": reward_pb2.VERDICT_CORRECT,
    "wrong": reward_pb2.VERDICT_WRONG,
    "unparsable": reward_pb2.VERDICT_UNPARSABLE,
    "no_ground_truth": reward_pb2.VERDICT_NO_GROUND_TRUTH,
}


def _record(prompt: common_pb2.Prompt) -> PromptRecord:
    """What a plug-in verifier sees of a request's prompt: no images, and an empty `meta` (a gRPC prompt
    carries none)."""
    answer = prompt.answer if prompt.HasField("answer") else None
    return PromptRecord(
        id=prompt.id, question=prompt.question, answer=answer, choices=list(prompt.choices) or None, task=prompt.task
    )


def _score(
    record: PromptRecord, field_name: str, sample: common_pb2.Sample, grader: Grader, step_check: StepCheck | None
) -> tuple[reward_pb2.SampleScore, LabelledSample]:
    try:
        judgement = grader.judge(sample.text, record)
    except VerifierFailed as exc:  # the deployment's verifier, not the client's data: retrying will not help
        raise InvalidRequest(field_name, f"{exc} (sample {sample.index})", grpc.StatusCode.FAILED_PRECONDITION) from exc
    except ValueError as exc:  # the ground truth itself is unusable: the client's data, not the sample
        raise InvalidRequest(f"{field_name}.answer", str(exc)) from exc
    extraction = judgement.extraction
    score = reward_pb2.SampleScore(
        prompt_id=sample.prompt_id,
        index=sample.index,
        extracted_answer=extraction.answer or "",
        verdict=_VERDICTS[judgement.verdict],
        verifier=judgement.verifier,
    )
    correct = judgement.correct
    if correct and step_check is not None and not step_check.check(record.question, extraction.rationale):
        score.verdict, correct = reward_pb2.VERDICT_WRONG_STEP, False
    # A plug-in judges the whole response: without an extracted answer its sample is still judged, not unparsable.
    answer = None if judgement.verdict == "unparsable" else extraction.answer or ""
    return score, LabelledSample(sample.index, sample.text, answer, correct)


def label_batch(
    prompts: Sequence[tuple[int, common_pb2.Prompt]],
    samples: Sequence[common_pb2.Sample],
    *,
    grader: Grader,
    task_step_checks: Mapping[str, str],
    build_pairs: bool,
    max_pairs: int,
    seed: int,
    round_index: int,
) -> LabelledBatch:
    """Judge every sample with `grader`; with `build_pairs`, correctness pairs for the prompts that have
    ground truth.

    `prompts` carries each prompt's position in the request, so errors name the client's field: an unusable
    ground truth is INVALID_ARGUMENT, a failing plug-in verifier FAILED_PRECONDITION.
    """
    by_prompt: dict[str, list[common_pb2.Sample]] = {prompt.id: [] for _, prompt in prompts}
    for sample in samples:
        by_prompt[sample.prompt_id].append(sample)
    result = LabelledBatch(scores={}, pairs=[], skipped={}, tally=Tally(prompts=len(prompts), samples=len(samples)))
    tally = result.tally
    for position, prompt in prompts:
        record = _record(prompt)
        step_check = None
        if prompt.task in task_step_checks and prompt.HasField("answer"):
            step_check = STEP_CHECKS[task_step_checks[prompt.task]]
            try:  # the question itself must be readable, whatever the samples say
                step_check.check(prompt.question, "")
            except ValueError as exc:
                raise InvalidRequest(f"prompts[{position}].question", f"step check {step_check.name!r}: {exc}") from exc
        labelled, versions = [], {}
        for sample in by_prompt[prompt.id]:
            score, label = _score(record, f"prompts[{position}]", sample, grader, step_check)
            tally.wrong_step += score.verdict == reward_pb2.VERDICT_WRONG_STEP
            tally.unparsable += score.verdict == reward_pb2.VERDICT_UNPARSABLE
            result.scores[(sample.prompt_id, sample.index)] = score
            labelled.append(label)
            versions[sample.index] = sample.policy_version
        if not prompt.HasField("answer"):
            continue
        n_correct = sum(label.correct for label in labelled)
        tally.correct += n_correct
        tally.wrong += len(labelled) - n_correct
        tally.judged_by_task[prompt.task] += len(labelled)
        tally.correct_by_task[prompt.task] += n_correct
        tally.prompts_all_correct += bool(labelled) and n_correct == len(labelled)
        tally.prompts_all_wrong += bool(labelled) and n_correct == 0
        if not build_pairs:
            continue
        truth = None if prompt.choices else prompt.answer  # substring rule off for option letters
        outcome = correctness_pairs(prompt.id, labelled, truth=truth, max_pairs=max_pairs, seed=seed)
        if outcome.skipped is not None:
            result.skipped[prompt.id] = SKIP_CODES[outcome.skipped]
        for pair in outcome.pairs:
            result.pairs.append(
                common_pb2.PreferencePair(
                    id=f"r{round_index}-{prompt.id}-c{pair.chosen.index}-w{pair.rejected.index}",
                    prompt=prompt,
                    chosen=pair.chosen.text,
                    rejected=pair.rejected.text,
                    source=common_pb2.PAIR_SOURCE_CORRECTNESS,
                    provenance=common_pb2.Provenance(
                        policy_version=min(versions[pair.chosen.index], versions[pair.rejected.index]),
                        round=round_index,
                        verifier=result.scores[(prompt.id, pair.chosen.index)].verifier,
                        chosen_sample_index=pair.chosen.index,
                        rejected_sample_index=pair.rejected.index,
                        chosen_answer=pair.chosen.answer or "",
                        rejected_answer=pair.rejected.answer or "",
                    ),
                )
            )
        tally.pairs_correctness += len(outcome.pairs)
    return result
