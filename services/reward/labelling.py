"""Labelling a request's samples, the part of RewardService that is pure CPU: grouping by prompt, judging
(`score`) and correctness pairs (`build_pairs`).

The service groups a request once (`group_samples`) and hands each labelling worker (Ray actor) whole
groups, so a prompt's pairs never depend on how the batch was split. Counts come back as a `Tally` that
merges by addition, and so do the batches (`ScoredBatch`, `PairedBatch`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import grpc

from mpo.data.meta import decode_meta
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
    CorrectnessPair,
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
    dropout_ntp_cut: int = 0
    dropout_ntp_fewer_mentions: int = 0
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
    "dropout_ntp_cut",
    "dropout_ntp_fewer_mentions",
)


@dataclass(frozen=True)
class PromptGroup:
    """One prompt of a request with its samples (in request order), and the prompt's position in the
    request, so that errors name the client's field."""

    position: int
    prompt: common_pb2.Prompt
    samples: list[common_pb2.Sample]

    @property
    def field(self) -> str:
        return f"prompts[{self.position}]"


def group_samples(prompts: Sequence[common_pb2.Prompt], samples: Sequence[common_pb2.Sample]) -> list[PromptGroup]:
    """Every prompt, in request order, with its samples: the one grouping a request gets.

    A sample of a prompt the request does not hold, or a repeated prompt id or (prompt id, index), is
    refused before anything is judged, naming the field as the request interceptor does
    (`mpo/serving/validation.py`, which refuses such a gRPC request first): groups are never wrong.
    """
    position_of: dict[str, int] = {}
    for i, prompt in enumerate(prompts):
        first = position_of.setdefault(prompt.id, i)
        if first != i:
            raise InvalidRequest(
                f"prompts[{i}].id", f"duplicate prompt id {prompt.id!r}; already used at prompts[{first}].id"
            )
    members: dict[str, list[common_pb2.Sample]] = {prompt.id: [] for prompt in prompts}
    first_sample: dict[tuple[str, int], int] = {}
    for i, sample in enumerate(samples):
        if sample.prompt_id not in members:
            raise InvalidRequest(f"samples[{i}].prompt_id", f"no prompt with id {sample.prompt_id!r} in this request")
        first = first_sample.setdefault((sample.prompt_id, sample.index), i)
        if first != i:
            raise InvalidRequest(
                f"samples[{i}].index",
                f"duplicate sample (prompt_id {sample.prompt_id!r}, index {sample.index}); "
                f"already used at samples[{first}].index",
            )
        members[sample.prompt_id].append(sample)
    return [PromptGroup(i, prompt, members[prompt.id]) for i, prompt in enumerate(prompts)]


@dataclass
class ScoredBatch:
    """What `score` gives: one score per sample, in group order."""

    scores: list[reward_pb2.SampleScore] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)

    def __add__(self, other: ScoredBatch) -> ScoredBatch:
        return ScoredBatch([*self.scores, *other.scores], self.tally + other.tally)


@dataclass
class PairedBatch:
    """What `build_pairs` gives: correctness pairs in group order, and why a prompt gave none."""

    pairs: list[common_pb2.PreferencePair] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    tally: Tally = field(default_factory=Tally)

    def __add__(self, other: PairedBatch) -> PairedBatch:
        return PairedBatch([*self.pairs, *other.pairs], {**self.skipped, **other.skipped}, self.tally + other.tally)


@dataclass(frozen=True)
class Judged:
    """One sample after judging: its score for the client and its label for the pair builder."""

    sample: common_pb2.Sample
    score: reward_pb2.SampleScore
    label: LabelledSample


_VERDICTS = {
    "correct": reward_pb2.VERDICT_CORRECT,
    "wrong": reward_pb2.VERDICT_WRONG,
    "unparsable": reward_pb2.VERDICT_UNPARSABLE,
    "no_ground_truth": reward_pb2.VERDICT_NO_GROUND_TRUTH,
}


def score(groups: Sequence[PromptGroup], *, grader: Grader, task_step_checks: Mapping[str, str]) -> ScoredBatch:
    """Judge every sample of `groups` with `grader`: what `Score` returns, but the model-based reward."""
    batch = ScoredBatch(tally=_sizes(groups))
    for group in groups:
        batch.scores.extend(judged.score for judged in _judge_group(group, grader, task_step_checks, batch.tally))
    return batch


def build_pairs(
    groups: Sequence[PromptGroup],
    *,
    grader: Grader,
    task_step_checks: Mapping[str, str],
    max_pairs: int,
    seed: int,
    round_index: int,
) -> PairedBatch:
    """Correctness pairs (at most `max_pairs` per prompt, drawn with `seed`) for the groups whose prompt has
    ground truth; the others are left to DropoutNTP (the service), counted in `prompts` and `samples` only."""
    batch = PairedBatch(tally=_sizes(groups))
    for group in groups:
        if not group.prompt.HasField("answer"):
            continue
        judged = _judge_group(group, grader, task_step_checks, batch.tally)
        prompt = group.prompt
        truth = None if prompt.choices else prompt.answer  # substring rule off for option letters
        outcome = correctness_pairs(prompt.id, [j.label for j in judged], truth=truth, max_pairs=max_pairs, seed=seed)
        if outcome.skipped is not None:
            batch.skipped[prompt.id] = SKIP_CODES[outcome.skipped]
        by_index = {j.sample.index: j for j in judged}
        batch.pairs.extend(_pair_proto(prompt, pair, by_index, round_index) for pair in outcome.pairs)
        batch.tally.pairs_correctness += len(outcome.pairs)
    return batch


def _judge_group(group: PromptGroup, grader: Grader, task_step_checks: Mapping[str, str], tally: Tally) -> list[Judged]:
    """The per-sample verdict step `score` and `build_pairs` share: every sample of one prompt judged, and
    counted in `tally`.

    Errors name the client's field: an unusable ground truth or a question the task's step check cannot
    read is INVALID_ARGUMENT, a failing plug-in verifier FAILED_PRECONDITION.
    """
    prompt = group.prompt
    record = _record(prompt)
    step_check = _step_check(group, task_step_checks)
    judged = [_judge(record, group.field, sample, grader, step_check) for sample in group.samples]
    tally.wrong_step += sum(j.score.verdict == reward_pb2.VERDICT_WRONG_STEP for j in judged)
    tally.unparsable += sum(j.score.verdict == reward_pb2.VERDICT_UNPARSABLE for j in judged)
    if prompt.HasField("answer"):
        n_correct = sum(j.label.correct for j in judged)
        tally.correct += n_correct
        tally.wrong += len(judged) - n_correct
        tally.judged_by_task[prompt.task] += len(judged)
        tally.correct_by_task[prompt.task] += n_correct
        tally.prompts_all_correct += bool(judged) and n_correct == len(judged)
        tally.prompts_all_wrong += bool(judged) and n_correct == 0
    return judged


def _sizes(groups: Sequence[PromptGroup]) -> Tally:
    return Tally(prompts=len(groups), samples=sum(len(group.samples) for group in groups))


def _record(prompt: common_pb2.Prompt) -> PromptRecord:
    """What a plug-in verifier sees of a request's prompt: everything but the images (validated already, so
    `meta_json` decodes)."""
    answer = prompt.answer if prompt.HasField("answer") else None
    return PromptRecord(
        id=prompt.id,
        question=prompt.question,
        answer=answer,
        choices=list(prompt.choices) or None,
        task=prompt.task,
        meta=decode_meta(prompt.meta_json),
    )


def _step_check(group: PromptGroup, task_step_checks: Mapping[str, str]) -> StepCheck | None:
    """The task's step check, once its question proved readable (whatever the samples say)."""
    prompt = group.prompt
    if prompt.task not in task_step_checks or not prompt.HasField("answer"):
        return None
    step_check = STEP_CHECKS[task_step_checks[prompt.task]]
    try:
        step_check.check(prompt.question, "", prompt.answer)
    except ValueError as exc:
        raise InvalidRequest(f"{group.field}.question", f"step check {step_check.name!r}: {exc}") from exc
    return step_check


def _judge(
    record: PromptRecord, field_name: str, sample: common_pb2.Sample, grader: Grader, step_check: StepCheck | None
) -> Judged:
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
    if correct and step_check and not step_check.check(record.question, extraction.rationale, record.answer or ""):
        score.verdict, correct = reward_pb2.VERDICT_WRONG_STEP, False
    # A plug-in judges the whole response: without an extracted answer its sample is still judged, not unparsable.
    answer = None if judgement.verdict == "unparsable" else extraction.answer or ""
    return Judged(sample, score, LabelledSample(sample.index, sample.text, answer, correct))


def _pair_proto(
    prompt: common_pb2.Prompt, pair: CorrectnessPair, by_index: Mapping[int, Judged], round_index: int
) -> common_pb2.PreferencePair:
    chosen, rejected = by_index[pair.chosen.index], by_index[pair.rejected.index]
    return common_pb2.PreferencePair(
        id=f"r{round_index}-{prompt.id}-c{pair.chosen.index}-w{pair.rejected.index}",
        prompt_id=prompt.id,
        chosen=pair.chosen.text,
        rejected=pair.rejected.text,
        source=common_pb2.PAIR_SOURCE_CORRECTNESS,
        provenance=common_pb2.Provenance(
            policy_version=min(chosen.sample.policy_version, rejected.sample.policy_version),
            round=round_index,
            verifier=chosen.score.verifier,
            chosen_sample_index=pair.chosen.index,
            rejected_sample_index=pair.rejected.index,
            chosen_answer=pair.chosen.answer or "",
            rejected_answer=pair.rejected.answer or "",
        ),
    )
