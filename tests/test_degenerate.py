"""Which held-out answers count as degenerate: loops, answers cut at the token limit, no final answer."""

from __future__ import annotations

import pytest

from mpo.grading.degenerate import MIN_LOOP_SPAN, has_repetition_loop, judge_degeneracy
from mpo.v1 import common_pb2, reward_pb2

PROSE = list(range(100, 160))  # 60 distinct tokens: no unit repeats anywhere


def looped(unit: list[int], times: int) -> list[int]:
    """Prose, then `unit` back to back `times` times, then prose again."""
    return PROSE[:10] + unit * times + PROSE[10:20]


def test_distinct_tokens_and_short_repeats_are_not_loops() -> None:
    assert not has_repetition_loop(PROSE)
    assert not has_repetition_loop([])
    assert not has_repetition_loop(looped([7, 8], 5)), "'+ 1 + 1 + 1': 10 tokens, under the span"
    assert not has_repetition_loop(looped([5], MIN_LOOP_SPAN - 1))


@pytest.mark.parametrize(
    ("unit", "times"),
    [
        ([5], MIN_LOOP_SPAN),  # one token over the whole span
        ([1, 2, 3], MIN_LOOP_SPAN // 3),  # a short phrase
        (list(range(16)), 3),  # a sentence-sized unit three times (48 tokens)
    ],
)
def test_a_unit_repeated_over_the_span_is_a_loop(unit: list[int], times: int) -> None:
    assert has_repetition_loop(looped(unit, times))
    assert not has_repetition_loop(looped(unit, times - 1)), "one repeat fewer is under the threshold"


def test_a_long_unit_needs_three_repeats_and_longer_units_are_not_looked_for() -> None:
    sentence = list(range(16))
    assert not has_repetition_loop(looped(sentence, 2)), "twice is a repeat, not a loop"
    assert not has_repetition_loop(looped(list(range(20)), 3)), "a 20-token unit is longer than is looked for"
    assert has_repetition_loop(looped(list(range(20)), 3), max_unit=20)


def sample(tokens: list[int], finish: int = common_pb2.FINISH_REASON_STOP) -> common_pb2.Sample:
    return common_pb2.Sample(prompt_id="p", text="x", token_ids=tokens, finish_reason=finish)


def test_each_kind_of_degeneracy_is_judged_from_the_sample_and_its_verdict() -> None:
    clean = judge_degeneracy(sample(PROSE), reward_pb2.VERDICT_WRONG)
    assert not clean.degenerate, "a wrong answer with a final answer is not degenerate"
    assert judge_degeneracy(sample(PROSE), reward_pb2.VERDICT_UNPARSABLE).no_final_answer
    cut = judge_degeneracy(sample(PROSE, common_pb2.FINISH_REASON_LENGTH), reward_pb2.VERDICT_CORRECT)
    assert cut.truncated and cut.degenerate and not cut.no_final_answer
    loop = judge_degeneracy(sample(looped([3, 4], 12)), reward_pb2.VERDICT_CORRECT)
    assert loop.repetition_loop and loop.degenerate and not loop.truncated
    # No ground truth (e.g. `describe`): nothing to miss, but a loop still counts.
    assert not judge_degeneracy(sample(PROSE), reward_pb2.VERDICT_NO_GROUND_TRUTH).degenerate
    assert judge_degeneracy(sample(looped([9], 30)), reward_pb2.VERDICT_NO_GROUND_TRUTH).degenerate
