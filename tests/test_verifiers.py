"""Answer extraction and the verifier registry: a table of tricky cases with their expected results,
properties of the numeric matcher, and the registry's errors."""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpo.data.tasks import TASKS
from mpo.grading import verifiers
from mpo.grading.answers import compile_answer_pattern, extract_final_answer
from mpo.grading.verifiers import (
    TASK_VERIFIERS,
    VERIFIERS,
    MathVerifier,
    NumericVerifier,
    Verifier,
    register_verifier,
    verify_answer,
    verify_with,
)
from mpo.grading.verify import answers_match

R = "Counting them one by one.\n"  # a rationale

EXTRACTION_CASES = [
    (R + "Final answer: 4", "4"),
    ("First try.\nFinal answer: 3\nNo, recount.\nFinal answer: 4", "4"),
    (R + "final ANSWER: 7", "7"),
    (R + "Final answer: Final answer: 5", "5"),
    (R + "Final answer:", None),
    (R + "Final answer:   ", None),
    (R + "Final answer: .", None),
    (R + "Final answer: **", None),
    (R + "Final answer: 4\nand a second line", None),
    (R + "Final answer: 4\n\n", "4"),
    (R + "Final answer: 4\r\n", "4"),
    ("Final answer: 4", None),
    ("  \n Final answer: 4", None),
    ("**Final answer:** 4", None),
    ("The answer is 4.", None),
    (R + "Final answer : 4", None),
    (R + "Finalanswer: 4", None),
    (R + "Final answer: 42.", "42"),
    (R + "Final answer: 3.5", "3.5"),
    (R + "Final answer: -3", "-3"),
    (R + "Final answer: **42**", "42"),
    (R + "**Final answer:** 42", "42"),
    (R + "**Final answer: 42**", "42"),
    (R + "Final answer: ** 42 **.", "42"),
    (R + "Final answer: $\\boxed{42}$.", "42"),
    (R + "Final answer: \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    (R + "Final answer: \\boxed{1}{2}", "\\boxed{1}{2}"),
    (R + "Final answer: $5", "$5"),
    (R + "Final answer: $x$ or $y$", "$x$ or $y$"),
    (R + "Final answer: (B).", "(B)"),
    (R + "Final answer: 2*3", "2*3"),
    # \boxed{...} when there is no "Final answer:" (these were all unparsable before boxed answers were read)
    (R + "So the sum is \\boxed{42}.", "42"),
    (R + "\\boxed{1} at first, then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
    (R + "\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),
    (R + "\\boxed{\\boxed{7}}", "7"),
    (R + "\\boxed{ $12$ }", "12"),
    (R + "\\boxed{3} and then \\boxed{4", "3"),
    (R + "\\boxed{}", None),
    ("\\boxed{42}", None),
    (R + "\\boxed 42", None),
    # "Final answer:" wins over \boxed, malformed or not
    (R + "\\boxed{3}\nFinal answer: 4", "4"),
    (R + "Final answer: 4\nbut \\boxed{5}", None),
]


@pytest.mark.parametrize(("response", "expected"), EXTRACTION_CASES)
def test_extraction_table(response: str, expected: str | None) -> None:
    extraction = extract_final_answer(response)
    assert extraction.answer == expected, extraction.problem
    assert extraction.parsable == (expected is not None)
    assert (extraction.problem is None) == (expected is not None)


ANSWER_PATTERN = compile_answer_pattern(r"ANSWER:\s*(\S+)")


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (R + "ANSWER: 12", "12"),
        (R + "ANSWER: 1, no, ANSWER: 2", "2"),
        (R + "ANSWER: 12 though \\boxed{13}", "12"),
        (R + "\\boxed{13}", "13"),
        (R + "ANSWER: 12\nFinal answer: 7", "7"),
        (R + "ANSWER: **", None),
        ("ANSWER: 12", None),
    ],
)
def test_the_answer_pattern_is_tried_after_the_marker_and_before_boxed(response: str, expected: str | None) -> None:
    extraction = extract_final_answer(response, ANSWER_PATTERN)
    assert extraction.answer == expected, extraction.problem
    if expected is not None:
        assert extraction.rationale.startswith(R)


def test_a_pattern_match_without_its_group_is_skipped() -> None:
    either = compile_answer_pattern(r"ANSWER: (\d+)|N/A")
    assert extract_final_answer(R + "ANSWER: 5, or N/A", either).answer == "5"
    assert extract_final_answer(R + "N/A", either).problem == (
        "no 'Final answer:', no match of the answer pattern and no \\boxed{...}"
    )


@pytest.mark.parametrize(
    ("pattern", "message"),
    [("ANSWER: (", "not a regular expression"), ("ANSWER", "found 0"), ("(A)(B)", "found 2")],
)
def test_an_answer_pattern_needs_exactly_one_capture_group(pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        compile_answer_pattern(pattern)


def test_boxed_extraction_takes_linear_time() -> None:
    hostile = R + "\\boxed{" * 50_000 + "\\boxed{9}" + "}" * 3 + "{" * 50_000
    started = time.monotonic()
    assert extract_final_answer(hostile).answer == "9"  # the outermost of the four that close, unwrapped
    assert time.monotonic() - started < 1.0


COLOURS = ["red", "blue", "green"]
YES_NO = ["yes", "no"]

# (verifier name or "auto", predicted, truth, choices, correct)
MATCH_CASES = [
    # numbers
    ("numeric", "42", "42", None, True),
    ("numeric", " -3", "-3", None, True),
    ("numeric", "+3", "3", None, True),
    ("numeric", "-3", "3", None, False),
    ("numeric", "-0", "0", None, True),
    ("numeric", "\u22123", "-3", None, True),
    ("numeric", "1,000", "1000", None, True),
    ("numeric", "1000", "1,000", None, True),
    ("numeric", "1,234,567.5", "1234567.5", None, True),
    ("numeric", "1,00", "100", None, False),
    ("numeric", "0.50", "0.5", None, True),
    ("numeric", ".5", "0.5", None, True),
    ("numeric", "3.0", "3", None, True),
    ("numeric", "1e3", "1000", None, True),
    ("numeric", "1/2", "0.5", None, True),
    ("numeric", "3/4", "0.75", None, True),
    ("numeric", "0.3333333", "1/3", None, True),
    ("numeric", "0.33", "1/3", None, False),
    ("numeric", "1/0", "0", None, False),
    ("numeric", "50%", "50%", None, True),
    ("numeric", "50.0%", "50%", None, True),
    ("numeric", "50%", "50", None, True),
    ("numeric", "50%", "0.5", None, True),
    ("numeric", "0.5", "50%", None, True),
    ("numeric", "0.5%", "50%", None, False),
    ("numeric", "0.5%", "50", None, False),
    ("numeric", "3.0000001", "3", None, True),
    ("numeric", "3.1", "3", None, False),
    ("numeric", "1000000.5", "1000000", None, True),
    ("numeric", "1000001", "1000000", None, False),
    ("numeric", "12345678901234567", "12345678901234568", None, False),
    ("numeric", "$5", "5", None, True),
    ("numeric", "-$5", "-5", None, True),
    ("numeric", "$$5", "5", None, False),
    ("numeric", "5 apples", "5", None, False),
    ("numeric", "forty-two", "42", None, False),
    ("numeric", "4 2", "42", None, False),
    ("numeric", "0x2A", "42", None, False),
    ("numeric", "inf", "1", None, False),
    ("numeric", "", "0", None, False),
    ("numeric", "1" * 5000, "12", None, False),
    # short text
    ("exact", "Red", "red", None, True),
    ("exact", " Yes. ", "yes", None, True),
    ("exact", "red!", "red", None, True),
    ("exact", "light  Blue", "light blue", None, True),
    ("exact", "the red one", "red one", None, True),
    ("exact", "a circle", "circle", None, True),
    ("exact", "A", "a", None, True),
    ("exact", "an", "a", None, False),
    ("exact", "reds", "red", None, False),
    ("exact", "not red", "red", None, False),
    ("exact", "-3", "3", None, False),
    # multiple choice, truth "B" = "blue"
    ("multiple_choice", "B", "B", COLOURS, True),
    ("multiple_choice", "b", "B", COLOURS, True),
    ("multiple_choice", "(B)", "B", COLOURS, True),
    ("multiple_choice", "B)", "B", COLOURS, True),
    ("multiple_choice", "B.", "B", COLOURS, True),
    ("multiple_choice", "[B]", "B", COLOURS, True),
    ("multiple_choice", "Option B", "B", COLOURS, True),
    ("multiple_choice", "option (b)", "B", COLOURS, True),
    ("multiple_choice", "the answer is (B)", "B", COLOURS, True),
    ("multiple_choice", "The correct answer is B", "B", COLOURS, True),
    ("multiple_choice", "Answer: B", "B", COLOURS, True),
    ("multiple_choice", "blue", "B", COLOURS, True),
    ("multiple_choice", " Blue. ", "B", COLOURS, True),
    ("multiple_choice", "(B) blue", "B", COLOURS, True),
    ("multiple_choice", "B", "blue", COLOURS, True),
    ("multiple_choice", "Blue", "blue", COLOURS, True),
    ("multiple_choice", "(B) red", "B", COLOURS, False),
    ("multiple_choice", "A", "B", COLOURS, False),
    ("multiple_choice", "red", "B", COLOURS, False),
    ("multiple_choice", "(D)", "B", COLOURS, False),
    ("multiple_choice", "B and C", "B", COLOURS, False),
    ("multiple_choice", "blue or green", "B", COLOURS, False),
    ("multiple_choice", "I think B", "B", COLOURS, False),
    ("multiple_choice", "no", "B", YES_NO, True),
    ("multiple_choice", "yes", "B", YES_NO, False),
    ("multiple_choice", "(C)", "B", YES_NO, False),
    # expressions
    ("math", "2*x+x", "3*x", None, True),
    ("math", "2x", "x+x", None, True),
    ("math", "0.5x", "x/2", None, True),
    ("math", "x^2-1", "(x-1)(x+1)", None, True),
    ("math", "x**2+1", "(x+1)^2", None, False),
    ("math", "sqrt(4)", "2", None, True),
    ("math", "sqrt(x^2)", "abs(x)", None, True),
    ("math", "abs(x)", "x", None, False),
    ("math", "sin(x)^2+cos(x)^2", "1", None, True),
    ("math", "\\frac{1}{2}", "0.5", None, True),
    ("math", "\\frac{\\sqrt{2}}{2}", "1/sqrt(2)", None, True),
    ("math", "pi", "3.14159265", None, True),
    ("math", "pi", "3.14", None, False),
    ("math", "1,000", "10^3", None, True),
    ("math", "50%", "1/2", None, True),
    ("math", "9^9^9", "1", None, False),
    ("math", "(x+y+z)^999-1", "x", None, False),
    ("math", "x = 2", "2", None, True),  # math-verify reads an assignment's value (the old verifier refused it)
    ("math", "x = 3", "2", None, False),
    ("math", "\\dfrac{3}{4}", "0.75", None, True),
    ("math", "\\frac{6}{8}", "\\frac{3}{4}", None, True),
    ("math", "\\frac{2}{3}", "\\frac{3}{4}", None, False),
    ("math", "\\frac{1}{3}", "0.333333", None, True),
    ("math", "3\\sqrt{2}", "\\sqrt{18}", None, True),
    ("math", "\\{2, 1\\}", "\\{1, 2\\}", None, True),
    ("math", "\\{1, 2, 2\\}", "\\{1, 2\\}", None, True),
    ("math", "\\{1, 3\\}", "\\{1, 2\\}", None, False),
    ("math", "[0, 1)", "[0,1)", None, True),
    ("math", "[0, 1]", "[0,1)", None, False),
    ("math", "(-\\infty, 2] \\cup (3, \\infty)", "(-\\infty,2]\\cup(3,\\infty)", None, True),
    ("math", "(-\\infty, 2]", "x \\le 2", None, True),
    ("math", "9^{9^{9}}", "1", None, False),
    ("math", "(x+y+z)^{999}-1", "x", None, False),
    ("math", "10^{10^{10}}!", "1", None, False),
    ("math", "e^{10^{5}}", "1", None, False),
    ("math", "(" * 9 + "x" + ")" * 9, "x", None, False),
    ("math", "x" * 301, "x", None, False),
    ("math", "__import__('os').system('true')", "1", None, False),
    ("math", "e.n", "1", None, False),
    ("math", "1/0", "1", None, False),
    # auto: multiple choice with choices, numeric when the truth is a number, else exact
    ("auto", "(A)", "A", YES_NO, True),
    ("auto", "12", "12.0", None, True),
    ("auto", "Red", "red", None, True),
    ("auto", "3", "three", None, False),
]


@pytest.mark.parametrize(("name", "predicted", "truth", "choices", "correct"), MATCH_CASES)
def test_matching_table(name: str, predicted: str, truth: str, choices: list[str] | None, correct: bool) -> None:
    assert verify_with(name, predicted, truth, choices)[0] is correct


@pytest.mark.parametrize(
    "answer",
    ["9^9^9", "9^{9^{9}}", "(x+y+z)^{999}-1", "x^{1001}", "10^{10^{10}}!", "e^{10^{5}}", "(" * 80 + "x" + ")" * 80],
)
def test_hostile_math_answers_are_wrong_at_once(answer: str) -> None:
    verifier = VERIFIERS["math"]
    assert verifier.verify("x", "x", None)  # the sandbox is up
    started = time.monotonic()
    assert not verifier.verify(answer, "x", None)
    assert time.monotonic() - started < 2.5, "well within the 5 s limit: refused by the bounds, not killed"


def test_a_comparison_that_overruns_its_time_limit_is_wrong_and_the_next_one_works() -> None:
    """A binomial that math-verify's LaTeX parser evaluates at once (C-level big integers: no signal stops
    them) and trigonometry that sympy's simplify takes a minute over: the sandbox is killed after the limit."""
    verifier = MathVerifier(time_limit=1.0)
    assert verifier.verify("\\frac{1}{2}", "0.5")
    slow = [
        ("\\binom{100000000}{50000000}", "1"),
        ("\\tan(z)^{6}\\sin(y)^{5}+\\cos(x+y+z)^{6}", "\\sin(x)^{6}\\cos(y)^{6}"),
    ]
    for predicted, truth in slow:
        assert verifier.verify("x", "x")  # a fresh sandbox when the last one was killed
        started = time.monotonic()
        assert not verifier.verify(predicted, truth)
        assert 1.0 <= time.monotonic() - started < 2.0
    assert verifier.verify("\\{2, 1\\}", "\\{1, 2\\}")


def test_tolerances_are_configurable() -> None:
    assert not VERIFIERS["numeric"].verify("3.01", "3", None)
    assert NumericVerifier(rel_tol=1e-2).verify("3.01", "3", None)
    assert not VERIFIERS["numeric"].verify("1e-10", "0", None)
    assert NumericVerifier(abs_tol=1e-9).verify("1e-10", "0", None)


finite = st.floats(allow_nan=False, allow_infinity=False)


def _trailing_zeros(x: float) -> str:
    mantissa, _, exponent = repr(x).partition("e")
    return mantissa + ("" if "." in mantissa else ".") + "000" + (f"e{exponent}" if exponent else "")


@given(finite)
def test_a_float_matches_itself_however_written(x: float) -> None:
    numeric = VERIFIERS["numeric"]
    for written in (repr(x), f"{x:,}", _trailing_zeros(x)):
        assert numeric.verify(written, repr(x), None), written


@given(finite.filter(lambda x: x != 0 and abs(x) <= 1e300))
def test_rounding_within_the_tolerance_matches(x: float) -> None:
    assert VERIFIERS["numeric"].verify(repr(x * (1 + 1e-8)), repr(x), None)


@given(finite.filter(lambda x: 1 < abs(x) <= 1e300))
def test_a_relative_error_of_a_thousandth_does_not_match(x: float) -> None:
    assert not VERIFIERS["numeric"].verify(repr(x * (1 + 1e-3)), repr(x), None)


@given(finite.filter(lambda x: x != 0))
def test_a_sign_flip_does_not_match(x: float) -> None:
    assert not VERIFIERS["numeric"].verify(repr(-x), repr(x), None)


@given(st.integers())
def test_integers_compare_exactly(n: int) -> None:
    numeric = VERIFIERS["numeric"]
    assert numeric.verify(f"{n:,}", str(n), None)
    assert not numeric.verify(str(n + 1), str(n), None)


@settings(deadline=None)  # the math verifier's first call starts its sandbox process
@given(st.text(max_size=60))
def test_no_prediction_makes_a_verifier_raise(predicted: str) -> None:
    """Predictions are untrusted model output; only a bad ground truth is an error."""
    for name, truth, choices in [("auto", "12", None), ("auto", "B", COLOURS), ("exact", "red", None)]:
        verify_with(name, predicted, truth, choices)
    verify_with("math", predicted, "x^2 + 1", None)


def test_verify_answer_names_the_verifier_it_used() -> None:
    assert verify_answer("12", "12", None, "arith") == (True, "numeric")
    assert verify_answer("twelve", "12", None, "arith") == (False, "numeric")
    assert verify_answer("no", "B", YES_NO, "shapes") == (True, "multiple_choice")
    assert verify_answer("3", "3", None, "shapes") == (True, "numeric")
    assert verify_answer("Red", "red", None, "shapes") == (True, "exact")


@pytest.mark.parametrize("task", ["describe", "nope"])
def test_unknown_task_lists_the_known_ones(task: str) -> None:
    with pytest.raises(KeyError, match="known tasks: arith, shapes"):
        verify_answer("1", "1", None, task)


def test_unknown_verifier_lists_the_registered_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(TASK_VERIFIERS, "mine", "fuzzy")
    with pytest.raises(KeyError, match="registered: exact, math, multiple_choice, numeric, auto"):
        verify_answer("1", "1", None, "mine")


@pytest.mark.parametrize(
    ("name", "truth", "choices"),
    [
        ("multiple_choice", "B", None),
        ("multiple_choice", "C", YES_NO),
        ("multiple_choice", "maybe", YES_NO),
        ("numeric", "twelve", None),
        ("exact", " . ", None),
        ("math", "\\frac{1}", None),
        ("math", "(" * 9 + "x" + ")" * 9, None),
        ("math", " ", None),
    ],
)
def test_an_unusable_truth_is_an_error_not_a_wrong_answer(name: str, truth: str, choices: list[str] | None) -> None:
    with pytest.raises(ValueError, match=r"truth|no choices"):
        verify_with(name, "B", truth, choices)


class _Never:
    name = "never"

    def verify(self, predicted: str, truth: str, choices: list[str] | None) -> bool:
        return False


def test_registering_a_verifier(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verifiers, "VERIFIERS", dict(VERIFIERS))
    monkeypatch.setitem(TASK_VERIFIERS, "mine", "never")
    register_verifier(_Never())
    assert verify_answer("1", "1", None, "mine") == (False, "never")
    for taken in ("never", "numeric", "auto"):
        with pytest.raises(ValueError, match="is taken"):
            register_verifier(type("Taken", (_Never,), {"name": taken})())
    assert all(isinstance(verifier, Verifier) for verifier in verifiers.VERIFIERS.values())


def test_answers_match_is_the_auto_choice() -> None:
    assert answers_match("(B)", "B", ["x", "y"])
    assert answers_match("1,000", "1000")
    assert answers_match("Blue", "blue")
    assert not answers_match("1001", "1000")


@pytest.mark.parametrize("task", ["arith", "shapes"])
def test_demonstrations_verify_under_their_task(task: str, tmp_path: Path) -> None:
    for i, record in enumerate(TASKS[task].generate(20, 3, tmp_path)):
        answer = extract_final_answer(TASKS[task].demonstration(record, random.Random(i)) or "").answer
        assert answer is not None and record.answer is not None
        assert verify_answer(answer, record.answer, record.choices, task)[0]
