"""Correctness pair builder (issue #6): candidates, dedup, substring rule, seeded cap, skip reasons, stats;
and the labelling around it (issue #28): a request grouped by prompt once, then judged (`score`) or paired
(`build_pairs`) over those groups, with the service's workers called in this process."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import grpc
import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from mpo.config import RewardConfig
from mpo.data.records import PromptRecord
from mpo.grading.hallucination import judge_description
from mpo.grading.mentions import MENTION_COUNTERS
from mpo.grading.verify import Grader, Judgement
from mpo.net import free_port
from mpo.services.reward import dropout_ntp
from mpo.services.reward import pairs as pairs_module
from mpo.services.reward.labelling import PromptGroup, build_pairs, group_samples, score
from mpo.services.reward.pairs import (
    SKIP_ALL_CORRECT,
    SKIP_ALL_WRONG,
    SKIP_CONTAINS_TRUTH,
    SKIP_EMPTY,
    SKIP_IDENTICAL,
    SKIP_NO_SAMPLES,
    CorrectnessPair,
    LabelledSample,
    PromptOutcome,
    contains_truth,
    correctness_pairs,
)
from mpo.services.reward.service import LabellingWorker, RewardService
from mpo.serving.clients import RolloutClient
from mpo.serving.validation import InvalidRequest
from mpo.v1 import common_pb2, reward_pb2, rollout_pb2

TRUTH = "42"


def right(index: int, text: str | None = None) -> LabelledSample:
    return LabelledSample(index, text or f"Reasoning {index * 'r'}. Final answer: {TRUTH}", TRUTH, True)


def wrong(index: int, text: str | None = None, answer: str | None = "7") -> LabelledSample:
    default = f"Reasoning {index * 'w'}. Final answer: {answer}" if answer is not None else f"No idea {index * 'w'}"
    return LabelledSample(index, text or default, answer, False)


def mixed(n_right: int, n_wrong: int) -> list[LabelledSample]:
    return [right(i) for i in range(n_right)] + [wrong(n_right + i) for i in range(n_wrong)]


def build(samples: list[LabelledSample], max_pairs: int = 15, seed: int = 0, prompt_id: str = "p") -> PromptOutcome:
    return correctness_pairs(prompt_id, samples, truth=TRUTH, max_pairs=max_pairs, seed=seed)


def index_pairs(outcome: PromptOutcome) -> list[tuple[int, int]]:
    return [(pair.chosen.index, pair.rejected.index) for pair in outcome.pairs]


def test_all_combinations_below_the_cap_in_index_order():
    samples = mixed(2, 3)
    outcome = build(list(reversed(samples)))
    assert outcome.skipped is None
    assert index_pairs(outcome) == [(0, 2), (0, 3), (0, 4), (1, 2), (1, 3), (1, 4)]


@pytest.mark.parametrize(("max_pairs", "expected"), [(15, 15), (3, 3), (16, 16), (100, 16), (1, 1)])
def test_cap(max_pairs, expected):
    outcome = build(mixed(4, 4), max_pairs=max_pairs)
    assert len(outcome.pairs) == expected
    assert len(set(index_pairs(outcome))) == expected
    assert index_pairs(outcome) == sorted(index_pairs(outcome))


@pytest.mark.parametrize("max_pairs", [0, -1])
def test_max_pairs_below_one_is_rejected(max_pairs):
    with pytest.raises(ValueError, match="max_pairs"):
        build(mixed(2, 2), max_pairs=max_pairs)


def test_blank_truth_and_duplicate_indices_are_rejected():
    with pytest.raises(ValueError, match="truth"):
        correctness_pairs("p", mixed(1, 1), truth="  ", max_pairs=15, seed=0)
    with pytest.raises(ValueError, match="duplicate"):
        build([right(0), wrong(0)])


def test_same_seed_same_pairs_and_seeds_differ_somewhere():
    samples = mixed(4, 4)
    assert index_pairs(build(samples, max_pairs=3, seed=1)) == index_pairs(build(samples, max_pairs=3, seed=1))
    subsets = {tuple(index_pairs(build(samples, max_pairs=3, seed=seed))) for seed in range(10)}
    assert len(subsets) > 1
    by_prompt = {tuple(index_pairs(build(samples, max_pairs=3, prompt_id=f"p{i}"))) for i in range(10)}
    assert len(by_prompt) > 1


def test_selection_is_independent_of_prompt_order():
    prompts = {f"q{i}": mixed(3 + i % 2, 4) for i in range(6)}

    def run(order: list[str]) -> dict[str, list[tuple[int, int]]]:
        return {pid: index_pairs(build(prompts[pid], max_pairs=4, seed=7, prompt_id=pid)) for pid in order}

    forward = run(sorted(prompts))
    assert forward == run(sorted(prompts, reverse=True))
    assert forward == run(["q3", "q0", "q5", "q1", "q4", "q2"])


def test_selection_ignores_the_order_of_samples():
    samples = mixed(4, 4)
    assert index_pairs(build(samples, max_pairs=5, seed=3)) == index_pairs(build(samples[::-1], max_pairs=5, seed=3))


def test_identical_responses_give_one_pair():
    chosen_text = "Because 6 * 7. Final answer: 42"
    rejected_text = "Because 6 + 1. Final answer: 7"
    samples = [
        right(0, chosen_text),
        right(1, "Because  6 * 7.\nFinal answer: 42"),  # same after whitespace normalisation
        wrong(2, rejected_text),
        wrong(3, rejected_text + "  "),
        wrong(4, "Other route. Final answer: 8", answer="8"),
    ]
    outcome = build(samples)
    assert index_pairs(outcome) == [(0, 2), (0, 4)]


def test_identical_chosen_and_rejected_text_is_no_pair():
    text = "Because 6 * 7. Final answer: 7"
    assert build([right(0, text), wrong(1, text)]).skipped == SKIP_IDENTICAL
    outcome = build([right(0, text), wrong(1, text), wrong(2)])
    assert index_pairs(outcome) == [(0, 2)]


def test_empty_responses_are_never_a_side_of_a_pair():
    """A policy that ends its turn at once answers "": the trainer has nothing to learn from it (and refuses it)."""
    assert build([right(0, " "), wrong(1, "  ")]).skipped == SKIP_EMPTY
    outcome = build([right(0, " "), right(1), wrong(2, "\n"), wrong(3)])
    assert index_pairs(outcome) == [(1, 3)]


def test_substring_rule_drops_wrong_responses_that_state_the_truth():
    samples = [
        right(0),
        wrong(1, "First I got 42, then I doubted it. Final answer: 41", answer="41"),
        wrong(2, "It is 125 in total. Final answer: 125", answer="125"),
        wrong(3),
    ]
    outcome = build(samples)
    assert index_pairs(outcome) == [(0, 2), (0, 3)]
    only_noisy = build([right(0), wrong(1, "So 42 then? Final answer: 41", answer="41")])
    assert only_noisy.pairs == []
    assert only_noisy.skipped == SKIP_CONTAINS_TRUTH


def test_no_truth_skips_the_substring_rule_for_multiple_choice():
    """An option letter as truth ("A") would match the article "a" in nearly every wrong response."""
    samples = [
        LabelledSample(0, "Red is option A. Final answer: A", "A", True),
        wrong(1, "I see a square. Final answer: B", answer="B"),
    ]
    assert index_pairs(correctness_pairs("mc", samples, truth="A", max_pairs=15, seed=0)) == []
    assert index_pairs(correctness_pairs("mc", samples, truth=None, max_pairs=15, seed=0)) == [(0, 1)]


@pytest.mark.parametrize(
    ("text", "truth", "expected"),
    [
        ("... so 12 ...", "12", True),
        ("... so 125 ...", "12", False),
        ("x12 items", "12", False),
        ("12.", "12", True),
        ("is 12, 13", "12", True),
        ("3.12 metres", "12", False),
        ("12.5 metres", "12", False),
        ("12,000 people", "12", False),
        ("answer -12", "12", False),
        ("5-12 = -7", "12", True),
        ("5 - 12", "12", True),
        ("answer -12", "-12", True),
        ("THE CAT sat", "cat", True),
        ("concatenate", "cat", False),
        ("the  big\ncat", "big cat", True),
        ("pick (b) now", "(B)", True),
        ("costs $5", "$5", True),
        ("costs $50", "$5", False),
        ("1/2 of it", "1/2", True),
        ("11/22 of it", "1/2", False),
        ("first 125, later 12", "12", True),
    ],
)
def test_contains_truth(text, truth, expected):
    assert contains_truth(text, truth) is expected


def test_skip_reasons():
    assert build([]) == PromptOutcome([], SKIP_NO_SAMPLES)
    assert build(mixed(3, 0)) == PromptOutcome([], SKIP_ALL_CORRECT)
    assert build(mixed(0, 3)) == PromptOutcome([], SKIP_ALL_WRONG)
    assert build([wrong(0), wrong(1, answer=None)]).skipped == SKIP_ALL_WRONG


def test_unparsable_samples_are_wrong():
    outcome = build([right(0), wrong(1, answer=None), wrong(2)])
    assert index_pairs(outcome) == [(0, 1), (0, 2)]
    assert outcome.pairs[0].rejected.answer is None


def test_unparsable_sample_cannot_be_correct():
    with pytest.raises(ValueError, match="parsable"):
        LabelledSample(0, "text", None, True)


@settings(max_examples=200, derandomize=True, deadline=None, database=None)
@given(
    labels=st.lists(st.sampled_from(["right", "wrong", "unparsable"]), max_size=12),
    texts=st.data(),
    max_pairs=st.integers(1, 40),
    seed=st.integers(0, 2**32),
)
def test_pair_count_property(labels, texts, max_pairs, seed):
    # Texts come from a small pool, so duplicates (and equal chosen/rejected texts) are common.
    pool = st.sampled_from(["a", "b", "b ", "c", "d e", "d  e", "f"])
    samples = []
    for index, label in enumerate(labels):
        text = texts.draw(pool)
        answer = None if label == "unparsable" else "x"
        samples.append(LabelledSample(index, text, answer, label == "right"))
    outcome = build(samples, max_pairs=max_pairs, seed=seed)

    normalised = {sample.index: " ".join(sample.text.split()) for sample in samples}
    valid = {
        (normalised[c.index], normalised[w.index])
        for c in samples
        for w in samples
        if c.correct and not w.correct and normalised[c.index] != normalised[w.index]
    }
    assert len(outcome.pairs) == min(max_pairs, len(valid))
    assert (outcome.skipped is None) == bool(outcome.pairs)
    assert all(isinstance(pair, CorrectnessPair) for pair in outcome.pairs)
    assert all(pair.chosen.correct and not pair.rejected.correct for pair in outcome.pairs)
    keys = [(normalised[p.chosen.index], normalised[p.rejected.index]) for p in outcome.pairs]
    assert len(set(keys)) == len(keys)


# --- the builder against a listing of every candidate (issue #25: it used to list them all) -----------------


def listed_pairs(samples: list[LabelledSample], truth: str | None, max_pairs: int, seed: int) -> PromptOutcome:
    """The rules of `correctness_pairs` done the straightforward way: list every candidate, then filter and
    sample the list. Quadratic, so only for small cases; the builder must agree with it exactly."""
    if not samples:
        return PromptOutcome([], SKIP_NO_SAMPLES)
    ordered = sorted(samples, key=lambda sample: sample.index)
    correct = [sample for sample in ordered if sample.correct]
    wrong = [sample for sample in ordered if not sample.correct]
    if not wrong:
        return PromptOutcome([], SKIP_ALL_CORRECT)
    if not correct:
        return PromptOutcome([], SKIP_ALL_WRONG)
    unique: dict[tuple[str, str], CorrectnessPair] = {}
    blank = False
    for chosen in correct:
        for rejected in wrong:
            key = (" ".join(chosen.text.split()), " ".join(rejected.text.split()))
            if not key[0] or not key[1]:
                blank = True
            elif key[0] != key[1]:
                unique.setdefault(key, CorrectnessPair(chosen, rejected))
    if not unique:
        return PromptOutcome([], SKIP_EMPTY if blank else SKIP_IDENTICAL)
    valid = [pair for pair in unique.values() if truth is None or not contains_truth(pair.rejected.text, truth)]
    if not valid:
        return PromptOutcome([], SKIP_CONTAINS_TRUTH)
    if len(valid) > max_pairs:
        valid = random.Random(f"{seed}:p").sample(valid, max_pairs)
    return PromptOutcome(sorted(valid, key=lambda pair: (pair.chosen.index, pair.rejected.index)), None)


#: Few texts, so duplicates, equal chosen and rejected texts, blanks and stated truths are all common.
TEXT_POOL = ["a", "a ", "b", "b\n", "c 42", "d", "d  e", "d e", "f", " ", "", "so 42?", "42 f", "g"]


@settings(max_examples=600, derandomize=True, deadline=None, database=None)
@given(
    cases=st.lists(
        st.tuples(st.sampled_from(["right", "wrong", "unparsable"]), st.sampled_from(TEXT_POOL)), max_size=14
    ),
    indices=st.randoms(use_true_random=False),
    truth=st.sampled_from([TRUTH, None]),
    max_pairs=st.integers(1, 12),
    seed=st.integers(0, 2**64 - 1),
)
def test_builder_agrees_with_listing_every_candidate(cases, indices, truth, max_pairs, seed):
    positions = indices.sample(range(100), len(cases))  # sparse, shuffled indices: order must not matter
    samples = [
        LabelledSample(position, text, None if label == "unparsable" else "x", label == "right")
        for position, (label, text) in zip(positions, cases, strict=True)
    ]
    built = correctness_pairs("p", samples, truth=truth, max_pairs=max_pairs, seed=seed)
    assert built == listed_pairs(samples, truth, max_pairs, seed)


def test_candidates_are_counted_not_listed(monkeypatch):
    """300 x 300 answers are 90,000 candidates; only the pairs returned are ever built."""
    built = []

    class CountedPair(CorrectnessPair):
        def __init__(self, chosen: LabelledSample, rejected: LabelledSample) -> None:
            super().__init__(chosen, rejected)
            built.append(self)

    monkeypatch.setattr(pairs_module, "CorrectnessPair", CountedPair)
    samples = [right(i, f"{i} steps. Final answer: 42") for i in range(300)]
    samples += [wrong(300 + i, f"{i} steps. Final answer: {i + 100}") for i in range(300)]
    outcome = build(samples, max_pairs=5)
    assert len(outcome.pairs) == 5
    assert len(built) == 5


def test_thousands_of_right_and_wrong_answers_give_exactly_the_cap():
    """8,000 right x 8,000 wrong distinct answers: 64 million candidates, the cap's worth of pairs."""
    samples = [right(i, f"Step {i}. Final answer: 42") for i in range(8000)]
    samples += [wrong(8000 + i, f"Step {i}. Final answer: {i + 100}") for i in range(8000)]
    for max_pairs in (15, 4096):
        outcome = build(samples, max_pairs=max_pairs, seed=3)
        assert outcome.skipped is None and len(outcome.pairs) == max_pairs
        assert len(set(index_pairs(outcome))) == max_pairs
        assert index_pairs(outcome) == sorted(index_pairs(outcome))
        assert all(pair.chosen.correct and not pair.rejected.correct for pair in outcome.pairs)
    assert build(samples, max_pairs=15, seed=3) == build(samples[::-1], max_pairs=15, seed=3)


# --- labelling: one grouping, then score or build_pairs over the groups ---------------------------------------


class CountingGrader(Grader):
    """The default grader, counting the responses it judges."""

    def __init__(self) -> None:
        super().__init__()
        self.judged: list[str] = []

    def judge(self, response: str, record: PromptRecord) -> Judgement:
        self.judged.append(f"{record.id}: {response}")
        return super().judge(response, record)


class InProcessWorker:
    """A `LabellingWorker` called the way the service calls a Ray actor (`worker.method.remote(...)`)."""

    def __init__(self, grader: Grader) -> None:
        self.worker = LabellingWorker(RewardConfig(), [])
        self.worker.grader = grader
        self.calls: list[tuple[str, list[str]]] = []

    def __getattr__(self, method: str) -> SimpleNamespace:
        async def remote(groups: list[PromptGroup], *args: Any) -> Any:
            self.calls.append((method, [f"{g.prompt.id}:{len(g.samples)}" for g in groups]))
            return getattr(self.worker, method)(groups, *args)

        return SimpleNamespace(remote=remote)


def arith(prompt_id: str) -> common_pb2.Prompt:
    return common_pb2.Prompt(id=prompt_id, question="What is 12 + 7?", task="arith", answer="19")


def reply(prompt_id: str, index: int, text: str) -> common_pb2.Sample:
    return common_pb2.Sample(prompt_id=prompt_id, index=index, text=text, policy_version=2)


RIGHT, WRONG = "12 + 7 = 19. Final answer: 19", "12 + 7 = 20. Final answer: 20"
OPEN = common_pb2.Prompt(id="open", question="Describe it.", task="describe")  # no ground truth, no image


def service(workers: int) -> tuple[RewardService, CountingGrader, list[InProcessWorker]]:
    grader = CountingGrader()
    pool = [InProcessWorker(grader) for _ in range(workers)]
    return RewardService(RewardConfig(), pool, rollout=None, scorer=None), grader, pool


def test_grouping_keeps_request_order_and_names_the_field_that_breaks_it():
    prompts = [arith("a"), OPEN, arith("b")]
    samples = [reply("b", 1, WRONG), reply("a", 0, RIGHT), reply("b", 0, RIGHT)]
    groups = group_samples(prompts, samples)
    assert [(g.position, g.prompt.id, [s.index for s in g.samples]) for g in groups] == [
        (0, "a", [0]), (1, "open", []), (2, "b", [1, 0]),
    ]  # fmt: skip
    assert groups[2].field == "prompts[2]"
    refused = [
        (prompts, [*samples, reply("zzz", 0, RIGHT)], "samples[3].prompt_id",
         "no prompt with id 'zzz' in this request"),
        (prompts, [*samples, reply("b", 1, RIGHT)], "samples[3].index",
         "duplicate sample (prompt_id 'b', index 1); already used at samples[0].index"),
        ([*prompts, arith("a")], samples, "prompts[3].id", "duplicate prompt id 'a'; already used at prompts[0].id"),
    ]  # fmt: skip
    for bad_prompts, bad_samples, field, reason in refused:
        with pytest.raises(InvalidRequest) as caught:
            group_samples(bad_prompts, bad_samples)
        assert (caught.value.field, caught.value.reason) == (field, reason)


async def test_a_sample_of_an_unknown_prompt_fails_before_any_worker_or_verifier_runs():
    reward, grader, pool = service(workers=2)
    samples = [reply("a", 0, RIGHT), reply("zzz", 0, RIGHT)]
    for call in (reward.Score, reward.BuildPairs):
        request_type = reward_pb2.ScoreRequest if call == reward.Score else reward_pb2.BuildPairsRequest
        with pytest.raises(InvalidRequest, match=r"^samples\[1\]\.prompt_id: no prompt with id 'zzz'"):
            await call(request_type(prompts=[arith("a"), arith("b")], samples=samples), None)
    assert grader.judged == [] and [worker.calls for worker in pool] == [[], []]


async def test_score_judges_every_sample_once_and_answers_in_request_order():
    reward, grader, pool = service(workers=2)
    prompts = [arith("a"), OPEN, arith("b")]
    samples = [reply("b", 0, WRONG), reply("open", 0, "A circle. Final answer: circle"), reply("a", 0, RIGHT),
               reply("b", 1, "no idea"), reply("a", 1, WRONG)]  # fmt: skip
    response = await reward.Score(reward_pb2.ScoreRequest(prompts=prompts, samples=samples), None)
    assert [(s.prompt_id, s.index, s.verdict) for s in response.scores] == [
        ("b", 0, reward_pb2.VERDICT_WRONG), ("open", 0, reward_pb2.VERDICT_NO_GROUND_TRUTH),
        ("a", 0, reward_pb2.VERDICT_CORRECT), ("b", 1, reward_pb2.VERDICT_UNPARSABLE),
        ("a", 1, reward_pb2.VERDICT_WRONG),
    ]  # fmt: skip
    assert sorted(grader.judged) == sorted(f"{s.prompt_id}: {s.text}" for s in samples)
    assert [worker.calls for worker in pool] == [[("score", ["a:2", "open:1"])], [("score", ["b:2"])]]
    stats = response.stats
    assert (stats.prompts, stats.samples, stats.correct, stats.wrong, stats.unparsable) == (3, 5, 1, 3, 1)
    assert (stats.prompts_all_correct, stats.prompts_all_wrong, stats.pairs_correctness) == (0, 1, 0)


async def test_build_pairs_judges_only_prompts_with_ground_truth_and_sends_the_rest_to_dropout_ntp():
    reward, grader, pool = service(workers=2)
    prompts = [arith("a"), OPEN, arith("b")]
    samples = [reply("a", 0, RIGHT), reply("a", 1, WRONG), reply("open", 0, "A circle. Final answer: circle"),
               reply("b", 0, RIGHT)]  # fmt: skip
    request = reward_pb2.BuildPairsRequest(prompts=prompts, samples=samples, round=4)
    response = await reward.BuildPairs(request, None)
    assert [(p.id, p.source, p.provenance.verifier) for p in response.pairs] == [
        ("r4-a-c0-w1", common_pb2.PAIR_SOURCE_CORRECTNESS, "numeric"),
    ]
    assert dict(response.skipped_prompts) == {"b": "all_correct", "open": "no_image_for_dropout_ntp"}
    assert not any(judged.startswith("open:") for judged in grader.judged) and len(grader.judged) == 3
    assert [worker.calls for worker in pool] == [[("build_pairs", ["a:2", "open:1"])], [("build_pairs", ["b:1"])]]
    stats = response.stats
    assert (stats.prompts, stats.samples, stats.correct, stats.wrong) == (3, 4, 2, 1)
    assert (stats.prompts_all_correct, stats.pairs_correctness, stats.pairs_dropout_ntp) == (1, 1, 0)
    with_image = common_pb2.Prompt(
        id="open", question="Describe it.", task="describe", images=[common_pb2.Image(uri="x")]
    )
    request = reward_pb2.BuildPairsRequest(prompts=[with_image], samples=[reply("open", 0, "A red square on white.")])
    with pytest.raises(InvalidRequest, match="no rollout service is configured") as caught:
        await reward.BuildPairs(request, None)
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_score_and_build_pairs_agree_on_the_verdicts_of_the_same_groups():
    grader = Grader()
    groups = group_samples([arith("a")], [reply("a", 0, WRONG), reply("a", 1, RIGHT), reply("a", 2, "no idea")])
    scored = score(groups, grader=grader, task_step_checks={})
    paired = build_pairs(groups, grader=grader, task_step_checks={}, max_pairs=15, seed=0, round_index=1)
    correct = {s.index for s in scored.scores if s.verdict == reward_pb2.VERDICT_CORRECT}
    assert {p.provenance.chosen_sample_index for p in paired.pairs} == correct == {1}
    assert sorted(p.provenance.rejected_sample_index for p in paired.pairs) == [0, 2]
    assert scored.tally.pairs_correctness == 0 and paired.tally.pairs_correctness == 2
    assert (scored.tally + paired.tally).samples == 6


class ScriptedContinue:
    """A stand-in for the rollout's Continue whose continuations end as scripted: a real random-weight model
    cannot be made to stop (or not) on cue. The cut case runs against the real services in
    test_reward_service.py."""

    def __init__(self, endings: list[tuple[str, int]]) -> None:
        self.endings = endings
        self.asked: list[rollout_pb2.Continuation] = []

    async def continue_prefixes(self, continuations: Any, sampling: Any) -> rollout_pb2.ContinueResponse:
        self.asked = list(continuations)
        samples = [common_pb2.Sample(prompt_id=c.prompt.id, text=text, finish_reason=reason)
                   for c, (text, reason) in zip(continuations, self.endings, strict=True)]  # fmt: skip
        return rollout_pb2.ContinueResponse(samples=samples)


BLIND = dropout_ntp.blind_sampling(None, max_tokens=8, seed=0)
STOP, LENGTH = common_pb2.FINISH_REASON_STOP, common_pb2.FINISH_REASON_LENGTH


def test_blind_continuations_are_drawn_as_the_round_draws_but_one_each_bounded_and_seeded():
    like = common_pb2.SamplingParams(n=8, temperature=0.5, top_p=0.9, top_k=20, max_tokens=96, seed=7, stop=["\n"])
    drawn = dropout_ntp.blind_sampling(like, max_tokens=12, seed=3)
    assert (drawn.n, drawn.max_tokens, drawn.seed) == (1, 12, 3)
    assert (drawn.temperature, drawn.top_k, list(drawn.stop)) == (0.5, 20, ["\n"]) and drawn.top_p == pytest.approx(0.9)
    assert BLIND.temperature == 1.0 and (BLIND.top_p, BLIND.top_k, list(BLIND.stop)) == (0.0, 0, [])


async def test_finished_only_drops_the_continuations_cut_at_their_bound_and_counts_them():
    prompt = common_pb2.Prompt(id="s", question="Describe it.", task="describe", images=[common_pb2.Image(uri="x")])
    samples = [reply("s", i, f"I see a red circle and a blue square number {i}.") for i in range(3)]
    jobs, _ = dropout_ntp.plan(prompt, samples, fraction=0.5, max_pairs=3, seed=0)
    endings = [(" and a green triangle.", common_pb2.FINISH_REASON_STOP),
               (" and a green triangle, a", common_pb2.FINISH_REASON_LENGTH),
               (" and a yellow circle.", common_pb2.FINISH_REASON_STOP)]  # fmt: skip
    rollout = ScriptedContinue(endings)
    kept = await dropout_ntp.continue_without_images(rollout, jobs, sampling=BLIND, round_index=1, finished_only=True)
    assert [p.provenance.chosen_sample_index for p in kept.pairs] == [0, 2] and kept.cut == 1
    every = await dropout_ntp.continue_without_images(rollout, jobs, sampling=BLIND, round_index=1)
    assert len(every.pairs) == 3 and every.cut == 1, "by default a cut continuation is a rejected side too, counted"


async def test_unterminated_pairs_cut_both_sides_to_the_same_number_of_words():
    prompt = common_pb2.Prompt(id="s", question="Describe it.", task="describe", images=[common_pb2.Image(uri="x")])
    samples = [reply("s", i, f"I see a red circle and a blue square number {i}.") for i in range(3)]
    jobs, _ = dropout_ntp.plan(prompt, samples, fraction=0.5, max_pairs=3, seed=0)  # prefix: "I see a red circle"
    endings = [(" and a green triangle, a yellow star and", common_pb2.FINISH_REASON_LENGTH),  # runs on
               (" only, with a dot.", common_pb2.FINISH_REASON_STOP),  # stops early
               (" and a blue", common_pb2.FINISH_REASON_LENGTH)]  # fmt: skip
    pairs = (
        await dropout_ntp.continue_without_images(
            ScriptedContinue(endings), jobs, sampling=BLIND, round_index=1, unterminated=True
        )
    ).pairs
    assert [(p.chosen, p.rejected) for p in pairs] == [
        ("I see a red circle and a blue square number 0", "I see a red circle and a green triangle, a yellow"),
        ("I see a red circle and a blue square", "I see a red circle only, with a dot"),
    ], "no closing full stop on either side; sample 2's blind side says what its chosen side says: no pair"
    assert all(p.unterminated for p in pairs)
    whole = (
        await dropout_ntp.continue_without_images(ScriptedContinue(endings), jobs, sampling=BLIND, round_index=1)
    ).pairs
    assert [p.chosen for p in whole] == [s.text for s in samples] and not any(p.unterminated for p in whole)


async def test_matched_length_holds_each_continuation_from_below_to_its_chosen_answer():
    """The floor is the chosen answer's tokens less its end of turn when it ended on its own (the blind side
    may end where the chosen one did, or is cut one token later); all of them when it was cut itself; none
    for a sample without token ids. Both sides keep their ending: the pairs are not unterminated."""
    prompt = common_pb2.Prompt(id="s", question="Describe it.", task="describe", images=[common_pb2.Image(uri="x")])
    text = "I see a red circle and a blue square."
    samples = [
        common_pb2.Sample(prompt_id="s", index=0, text=text, token_ids=range(10), finish_reason=STOP),
        common_pb2.Sample(prompt_id="s", index=1, text=text, token_ids=range(12), finish_reason=LENGTH),
        reply("s", 2, text),
    ]
    jobs, _ = dropout_ntp.plan(prompt, samples, fraction=0.5, max_pairs=3, seed=0)
    rollout = ScriptedContinue([(" and a green triangle, a", LENGTH)] * 3)
    matched = await dropout_ntp.continue_without_images(rollout, jobs, sampling=BLIND, round_index=1, match_length=True)
    assert [(c.min_total_tokens, c.max_total_tokens) for c in rollout.asked] == [(9, 10), (12, 12), (0, 0)]
    assert len(matched.pairs) == 3 and matched.cut == 3 and not any(p.unterminated for p in matched.pairs)
    await dropout_ntp.continue_without_images(rollout, jobs, sampling=BLIND, round_index=1)
    assert [c.min_total_tokens for c in rollout.asked] == [0, 0, 0], "held from above only, by default"


async def test_an_unterminated_cut_that_leaves_a_side_without_words_gives_no_pair():
    """A policy that writes punctuation first (random weights do) must not yield a pair with an empty side,
    which the trainer would refuse, failing the round."""
    prompt = common_pb2.Prompt(id="s", question="Describe it.", task="describe", images=[common_pb2.Image(uri="x")])
    samples = [reply("s", 0, ". , ; red circle"), reply("s", 1, ". , red circle")]
    jobs, _ = dropout_ntp.plan(prompt, samples, fraction=0.5, max_pairs=2, seed=0)  # both prefixes ". ,"
    blind = ScriptedContinue([(" blue", common_pb2.FINISH_REASON_STOP), (" ; ?", common_pb2.FINISH_REASON_STOP)])
    cut = await dropout_ntp.continue_without_images(blind, jobs, sampling=BLIND, round_index=1, unterminated=True)
    assert cut.pairs == [], (
        "cut to three words the first chosen side is all punctuation, cut to four the second rejected"
    )


async def test_a_mention_counter_drops_the_pairs_whose_blind_side_names_fewer_things():
    """With describe mapped to the scene-object counter, a pair is kept only when its rejected side (as
    trained: after an unterminated cut too) names at least as many shapes as its chosen side; the dropped
    ones are counted. A task not mapped keeps every pair."""
    counters = {"describe": MENTION_COUNTERS["scene_objects"]}
    prompts = {task: common_pb2.Prompt(id=task, question="Describe it.", task=task, images=[common_pb2.Image(uri="x")])
               for task in ("describe", "caption")}  # fmt: skip
    text = "I see a red circle and a blue square and a green triangle."  # 3 mentions; prefix keeps 1
    endings = [(" and a blue square.", STOP),  # 2 of 3: fewer
               (" and two squares and the yellow shapes.", STOP),  # 3 of 3: as many
               (" and a green triangle, a red square and a blue circle.", STOP),  # 4 of 3: more
               (".", STOP)]  # fmt: skip
    jobs = []
    for task in ("describe", "caption"):
        planned, _ = dropout_ntp.plan(prompts[task], [reply(task, i, text) for i in range(2)], fraction=0.4,
                                      max_pairs=2, seed=0)  # fmt: skip
        jobs += planned
    assert [job.prefix for job in jobs] == ["I see a red circle"] * 4
    guarded = await dropout_ntp.continue_without_images(
        ScriptedContinue(endings), jobs, sampling=BLIND, round_index=1, mention_counters=counters
    )
    kept = [(p.prompt_id, p.provenance.chosen_sample_index) for p in guarded.pairs]
    assert kept == [("describe", 1), ("caption", 0), ("caption", 1)], "describe's first names 2 against 3"
    assert guarded.fewer_mentions == 1, "caption is not mapped: its blind side may name fewer"
    late = [(" and then, well, a red square and a blue circle and a green triangle.", STOP)] * 2
    whole = await dropout_ntp.continue_without_images(
        ScriptedContinue(late), jobs[:2], sampling=BLIND, round_index=1, mention_counters=counters
    )
    cut = await dropout_ntp.continue_without_images(
        ScriptedContinue(late), jobs[:2], sampling=BLIND, round_index=1, unterminated=True, mention_counters=counters
    )
    assert len(whole.pairs) == 2 and whole.fewer_mentions == 0, "whole, the blind side names 4 shapes against 3"
    assert cut.pairs == [] and cut.fewer_mentions == 2, "cut to the chosen side's 13 words it names 2 against 3"


def test_the_scene_object_counter_counts_the_hallucination_metrics_mentions():
    text = "Two red squares, a blue circle, the yellow shapes and no triangles; a red thing."
    assert (
        MENTION_COUNTERS["scene_objects"].count(text) == 4 == len(judge_description([("red", "square")], text).mentions)
    )


def test_first_words_keeps_the_original_spacing():
    assert dropout_ntp.first_words("a  red\tcircle.", 2) == "a  red"
    assert dropout_ntp.first_words("a red", 5) == "a red" and dropout_ntp.first_words("a red", 0) == ""


async def test_a_rollout_that_cannot_continue_keeps_its_status_so_the_round_retries():
    """UNAVAILABLE from the rollout's Continue (nothing listening here) must not turn into INTERNAL: the
    controller's retry policy retries UNAVAILABLE and fails at once on anything else."""
    reward, _, _ = service(workers=1)
    reward.rollout = RolloutClient(f"127.0.0.1:{free_port()}", retries=False)
    with_image = common_pb2.Prompt(
        id="open", question="Describe it.", task="describe", images=[common_pb2.Image(uri="x")]
    )
    request = reward_pb2.BuildPairsRequest(prompts=[with_image], samples=[reply("open", 0, "A red square on white.")])
    try:
        with pytest.raises(InvalidRequest, match="the rollout service's Continue failed") as caught:
            await reward.BuildPairs(request, None)
    finally:
        await reward.rollout.close()
    assert caught.value.code == grpc.StatusCode.UNAVAILABLE and caught.value.field == "prompts"
