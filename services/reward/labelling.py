"""Labels a batch of samples and builds its correctness pairs (the part of RewardService that is pure CPU).

Runs inside the labelling worker actors: each gets whole prompts with all their samples, so a prompt's
pairs never depend on how the batch was split. Counts come back as a `Tally` that merges by addition.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mpo.services.common.validation import InvalidRequest
from mpo.services.reward.answers import extract_final_answer
from mpo.services.reward.pairs import (
    SKIP_ALL_CORRECT,
    SKIP_ALL_WRONG,
    SKIP_CONTAINS_TRUTH,
    SKIP_IDENTICAL,
    SKIP_NO_SAMPLES,
    LabelledSample,
    correctness_pairs,
)
from mpo.services.reward.step_checks import STEP_CHECKS, StepCheck
from mpo.services.reward.verifiers import AUTO, verify_with
from mpo.v1 import common_pb2, reward_pb2

#: Reasons a prompt gave no pair, as reported in `BuildPairsResponse.skipped_prompts`.
SKIP_CODES = {
    SKIP_NO_SAMPLES: "no_samples",
    SKIP_ALL_CORRECT: "all_correct",
    SKIP_ALL_WRONG: "all_wrong",
    SKIP_IDENTICAL: "identical_responses",
    SKIP_CONTAINS_TRUTH: "wrong_answers_state_the_truth",
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


def _score(
    prompt: common_pb2.Prompt, field_name: str, sample: common_pb2.Sample, verifier: str, step_check: StepCheck | None
) -> tuple[reward_pb2.SampleScore, LabelledSample]:
    extraction = extract_final_answer(sample.text)
    score = reward_pb2.SampleScore(
        prompt_id=sample.prompt_id, index=sample.index, extracted_answer=extraction.answer or ""
    )
    if not prompt.HasField("answer"):
        score.verdict = reward_pb2.VERDICT_NO_GROUND_TRUTH
        return score, LabelledSample(sample.index, sample.text, extraction.answer, False)
    if extraction.answer is None:
        score.verdict = reward_pb2.VERDICT_UNPARSABLE
        return score, LabelledSample(sample.index, sample.text, None, False)
    try:
        correct, used = verify_with(verifier, extraction.answer, prompt.answer, list(prompt.choices) or None)
    except ValueError as exc:  # the ground truth itself is unusable: the client's data, not the sample
        raise InvalidRequest(f"{field_name}.answer", str(exc)) from exc
    score.verifier = used
    score.verdict = reward_pb2.VERDICT_CORRECT if correct else reward_pb2.VERDICT_WRONG
    if correct and step_check is not None and not step_check.check(prompt.question, extraction.rationale):
        score.verdict, correct = reward_pb2.VERDICT_WRONG_STEP, False
    return score, LabelledSample(sample.index, sample.text, extraction.answer, correct)


def label_batch(
    prompts: Sequence[tuple[int, common_pb2.Prompt]],
    samples: Sequence[common_pb2.Sample],
    *,
    task_verifiers: Mapping[str, str],
    task_step_checks: Mapping[str, str],
    build_pairs: bool,
    max_pairs: int,
    seed: int,
    round_index: int,
) -> LabelledBatch:
    """Judge every sample; with `build_pairs`, correctness pairs for the prompts that have ground truth.

    `prompts` carries each prompt's position in the request, so errors name the client's field.
    """
    by_prompt: dict[str, list[common_pb2.Sample]] = {prompt.id: [] for _, prompt in prompts}
    for sample in samples:
        by_prompt[sample.prompt_id].append(sample)
    result = LabelledBatch(scores={}, pairs=[], skipped={}, tally=Tally(prompts=len(prompts), samples=len(samples)))
    tally = result.tally
    for position, prompt in prompts:
        verifier = task_verifiers.get(prompt.task, AUTO)
        step_check = None
        if prompt.task in task_step_checks and prompt.HasField("answer"):
            step_check = STEP_CHECKS[task_step_checks[prompt.task]]
            try:  # the question itself must be readable, whatever the samples say
                step_check.check(prompt.question, "")
            except ValueError as exc:
                raise InvalidRequest(f"prompts[{position}].question", f"step check {step_check.name!r}: {exc}") from exc
        labelled, versions = [], {}
        for sample in by_prompt[prompt.id]:
            score, label = _score(prompt, f"prompts[{position}]", sample, verifier, step_check)
            tally.wrong_step += score.verdict == reward_pb2.VERDICT_WRONG_STEP
            result.scores[(sample.prompt_id, sample.index)] = score
            labelled.append(label)
            versions[sample.index] = sample.policy_version
        if not prompt.HasField("answer"):
            continue
        n_correct = sum(label.correct for label in labelled)
        tally.correct += n_correct
        tally.wrong += len(labelled) - n_correct
        tally.unparsable += sum(label.answer is None for label in labelled)
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
