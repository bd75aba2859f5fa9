"""Paired comparison of two evaluations of the same prompts (bench/online.py's gain and its error), and
the offline evaluation's share of degenerate answers on a real warm-started policy."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest

from mpo.evaluation import EvalResult, evaluate, paired_gain
from mpo.models.generate import Sampling, TransformersGenerator


def result(per_prompt: list[float]) -> EvalResult:
    accuracy = sum(per_prompt) / len(per_prompt)
    return EvalResult(len(per_prompt), 1, accuracy, accuracy, 0.0, {"arith": accuracy}, tuple(per_prompt))


def test_paired_gain_is_the_mean_per_prompt_difference_with_its_standard_error() -> None:
    before, after = result([0, 1, 1, 0, 1]), result([1, 1, 0, 1, 1])
    gain, error = paired_gain(before, after)
    assert gain == pytest.approx(after.accuracy - before.accuracy) == pytest.approx(0.2)
    assert error == pytest.approx(statistics.stdev([1, 0, -1, 1, 0]) / math.sqrt(5))
    assert paired_gain(after, after) == (0.0, 0.0)


def test_prompt_difficulty_cancels_in_the_paired_error() -> None:
    """2,000 prompts, a third solved by both policies, 60 newly solved and 20 newly failed: the paired
    error is a third of the one that treats the two accuracies as independent."""
    before = [1.0] * 700 + [0.0] * 60 + [1.0] * 20 + [0.0] * 1220
    after = [1.0] * 700 + [1.0] * 60 + [0.0] * 20 + [0.0] * 1220
    gain, paired_error = paired_gain(result(before), result(after))
    assert gain == pytest.approx(40 / 2000)
    independent = math.hypot(*(result(r).standard_error for r in (before, after)))
    assert paired_error < independent / 2.5


def test_paired_gain_refuses_evaluations_of_different_prompts() -> None:
    with pytest.raises(ValueError, match="same prompts: 3 vs 2 prompts"):
        paired_gain(result([0, 1, 1]), result([1, 1]))
    nothing = EvalResult(0, 1, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="0 vs 0"):
        paired_gain(nothing, nothing)


@pytest.mark.slow
def test_degenerate_share_counts_answers_cut_at_the_token_limit(sums_policy: Path) -> None:
    from tests.controller_helpers import sums

    records = sums(24, 900)
    generator = TransformersGenerator(sums_policy)
    roomy, cut = Sampling(max_new_tokens=24), Sampling(max_new_tokens=3)
    outputs = [row[0] for row in generator.generate_outputs(records, roomy)]
    finished = [output for output in outputs if not output.truncated]
    assert finished, "the warm-started policy ends its answers"
    assert all(output.token_ids[-1] in generator.stop_token_ids for output in finished)
    assert all(len(output.token_ids) == 24 for output in outputs if output.truncated)
    assert generator.generate(records, roomy) == [[output.text] for output in outputs]

    full = evaluate(generator, records, roomy)
    assert full.unparsable <= full.degenerate < 1.0
    assert full.degenerate >= sum(output.truncated for output in outputs) / len(outputs)
    short = evaluate(generator, records, cut)  # three tokens cannot finish "a + b = c. Final answer: c"
    assert short.degenerate == 1.0 and full.summary()["degenerate"] == round(full.degenerate, 4)
