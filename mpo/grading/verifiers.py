"""Answer verifiers (issue #6): does an extracted final answer match a record's ground truth?

A prediction a verifier cannot read is wrong; a ground truth it cannot read raises ValueError, because a data
bug must not silently score every sample as wrong. Every verifier does bounded work on untrusted predictions
(the math verifier under a time limit, in a child process). `TASK_VERIFIERS` picks a task's verifier by name;
"auto" picks per record: multiple_choice when the record has choices, numeric when the truth is a number,
else exact.

Adding a verifier: write a class with a unique `name` and `verify(predicted, truth, choices) -> bool`, call
`register_verifier(MyVerifier())` where your module is imported, and map tasks to it with
`TASK_VERIFIERS["my_task"] = "my_name"` (or pass the name to `verify_with`). A verifier that lives outside
this package and judges the whole response is a plug-in instead (`reward.verifiers`, mpo/plugins.py).
"""

from __future__ import annotations

import json
import logging
import math
import re
import select
import string
import subprocess
import sys
import threading
import unicodedata
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol, runtime_checkable

import sympy

from mpo.grading.registry import register_named


@runtime_checkable
class Verifier(Protocol):
    name: str

    def verify(self, predicted: str, truth: str, choices: list[str] | None) -> bool:
        """Whether `predicted` (an extracted final answer) is right; ValueError when `truth` is unusable."""
        ...


# --- numbers ---------------------------------------------------------------------------------------------------

_NUMBER_RE = re.compile(
    r"""
    \$?(?P<sign>[+-]?)\$?
    (?:
        (?P<num>\d+)\s*/\s*(?P<den>\d+)
      | (?P<mantissa>(?:\d{1,3}(?:,\d{3})+|\d+)(?P<point>\.\d*)?|\.\d+)(?:[eE](?P<exp>[+-]?\d{1,3}))?
    )
    \s*(?P<percent>%?)
    """,
    re.VERBOSE | re.ASCII,
)

#: Longer is no answer, and Python refuses to convert integers of over 4300 digits from text.
_MAX_NUMBER_CHARS = 1000


@dataclass(frozen=True)
class Number:
    value: Fraction
    percent: bool
    #: Written as a plain integer (no point, exponent or fraction): such numbers compare exactly.
    integer: bool
    #: Written with a decimal point or an exponent: a rounded value, to the math verifier.
    decimal: bool = False


def parse_number(text: str) -> Number | None:
    """A number as answers write it: sign, "$" prefix, thousands commas ("1,234"), decimals, exponents up to
    three digits, simple fractions ("3/4") and a trailing "%". Words, units and spaced digits are None."""
    text = text.strip().replace("\u2212", "-")  # a typeset minus sign
    if len(text) > _MAX_NUMBER_CHARS:
        return None
    match = _NUMBER_RE.fullmatch(text)
    if match is None or text.count("$") > 1:
        return None
    if match["den"] is not None:
        if int(match["den"]) == 0:
            return None
        value = Fraction(int(match["num"]), int(match["den"]))
    else:
        value = Fraction(match["mantissa"].replace(",", "")) * Fraction(10) ** int(match["exp"] or 0)
    integer = match["mantissa"] is not None and match["point"] is None and match["exp"] is None
    decimal = match["mantissa"] is not None and not integer
    return Number(-value if match["sign"] == "-" else value, bool(match["percent"]), integer, decimal)


class NumericVerifier:
    """Numbers equal within `rel_tol` (relative to the larger magnitude) or `abs_tol`.

    Two plain integers must be equal: an off-by-one count is wrong however large it is; the tolerance is for
    rounding in decimals. A percent compares as written against another percent ("50%" vs "50.0%"); against a
    bare number it may be read either way, so "50%" matches "50" and "0.5" (but not "0.5%").
    """

    name = "numeric"

    def __init__(self, rel_tol: float = 1e-6, abs_tol: float = 0.0) -> None:
        self.rel_tol, self.abs_tol = Fraction(rel_tol), Fraction(abs_tol)

    def verify(self, predicted: str, truth: str, choices: list[str] | None = None) -> bool:
        expected = parse_number(truth)
        if expected is None:
            raise ValueError(f"numeric verifier: the truth {truth!r} is not a number")
        got = parse_number(predicted)
        return got is not None and self.numbers_match(got, expected)

    def numbers_match(self, got: Number, expected: Number) -> bool:
        if got.percent == expected.percent:
            return self._close(got.value, expected.value, exact=got.integer and expected.integer)
        bare, percent = (expected, got) if got.percent else (got, expected)
        return any(self._close(bare.value, reading, exact=False) for reading in (percent.value, percent.value / 100))

    def _close(self, a: Fraction, b: Fraction, *, exact: bool) -> bool:
        if a == b:
            return True
        return not exact and abs(a - b) <= max(self.rel_tol * max(abs(a), abs(b)), self.abs_tol)


# --- short text and multiple choice ------------------------------------------------------------------------------

#: Stripped from both ends of a short text answer; signs, "%" and "$" are kept as they change the meaning.
_SURROUNDING = string.whitespace + ".,;:!?\"'`()[]{}<>*_~\u201c\u201d\u2018\u2019\u00ab\u00bb"
_ARTICLES = frozenset({"a", "an", "the"})


def normalise_text(text: str) -> str:
    """Case-, width- and space-insensitive form without surrounding punctuation or articles (unless the text
    is nothing but articles, so that "A" stays "a")."""
    words = unicodedata.normalize("NFKC", text).casefold().strip(_SURROUNDING).split()
    return " ".join([word for word in words if word not in _ARTICLES] or words)


class ExactVerifier:
    """Normalised exact match for short text answers (colour names, yes/no)."""

    name = "exact"

    def verify(self, predicted: str, truth: str, choices: list[str] | None = None) -> bool:
        expected = normalise_text(truth)
        if not expected:
            raise ValueError(f"exact verifier: the truth {truth!r} is empty")
        return normalise_text(predicted) == expected


_OPTION_RE = re.compile(
    r"""
    (?:(?:the\s+)?(?:correct\s+|final\s+)?(?:answer|option|choice)(?:\s+is)?\s*:?\s*)?
    (?:\((?P<paren>[a-z])\)|\[(?P<bracket>[a-z])\]|(?P<bare>[a-z])(?![a-z]))
    [.):]?
    (?:\s+(?P<rest>.+))?
    """,
    re.VERBOSE | re.IGNORECASE | re.DOTALL | re.ASCII,
)


def option_index(text: str, choices: list[str]) -> int | None:
    """Which option `text` names: the option's own text (tried first), or its letter in a short form ("B",
    "(B)", "B)", "B.", "[B]", "Option B", "the answer is (B)"), optionally followed by the option's text.
    None when it names no option, a letter past the last option, or a letter with another option's text."""
    normalised = normalise_text(text)
    by_text = [i for i, option in enumerate(choices) if normalise_text(option) == normalised]
    if by_text:
        return by_text[0]
    match = _OPTION_RE.fullmatch(text.strip())
    if match is None:
        return None
    letter = match["paren"] or match["bracket"] or match["bare"]
    index = ord(letter.upper()) - ord("A")
    if index >= len(choices):
        return None
    if match["rest"] is not None and normalise_text(match["rest"]) != normalise_text(choices[index]):
        return None
    return index


class MultipleChoiceVerifier:
    """Same option as the truth, which may be given as a letter or as the option's text."""

    name = "multiple_choice"

    def verify(self, predicted: str, truth: str, choices: list[str] | None) -> bool:
        if not choices:
            raise ValueError("multiple_choice verifier: the record has no choices")
        expected = option_index(truth, choices)
        if expected is None:
            raise ValueError(f"multiple_choice verifier: the truth {truth!r} names none of {choices}")
        return option_index(predicted, choices) == expected


# --- expressions (math-verify) -----------------------------------------------------------------------------------

#: Answers a parse is not attempted on: longer, or with brackets nested deeper (math-verify's LaTeX parser takes
#: about a second at depth 10 and 40 at depth 80).
_MAX_EXPRESSION_CHARS = 300
_MAX_NESTING = 8
#: Bounds on the parsed answer, checked before math-verify evaluates anything, so that answers which could only
#: burn the time limit ("9^{9^{9}}", "(x+y+z)^{999}") are rejected at once.
_MAX_EXPONENT = 1000
_MAX_MAGNITUDE = sympy.Float("1e1000")
_MAX_FACTORIAL = 1000
_MAX_DEGREE = 12
_MAX_TERMS = 200
_DIGITS = 30
#: Plain-text spellings turned into the LaTeX that math-verify reads ("sin(x)^2", "x**2", "abs(x)", "pi").
_PLAIN_FUNCTION = re.compile(r"(?<![\\A-Za-z])(sin|cos|tan|cot|sec|csc|ln|log|exp|pi)(?![A-Za-z])")
_PLAIN_ABS = re.compile(r"(?<![\\A-Za-z])abs\(([^()]*)\)")


def _beyond_limits(text: str) -> str | None:
    """Why `text` is not worth parsing (empty, too long, nested too deeply); None when it is."""
    if not text.strip():
        return "is empty"
    if len(text) > _MAX_EXPRESSION_CHARS:
        return f"has {len(text)} characters (at most {_MAX_EXPRESSION_CHARS})"
    depth = deepest = 0
    for char in text:
        depth += {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}.get(char, 0)
        deepest = max(deepest, depth)
    return f"nests brackets {deepest} deep (at most {_MAX_NESTING})" if deepest > _MAX_NESTING else None


def _value(expression: sympy.Basic) -> sympy.Expr | None:
    """The numeric value to _DIGITS digits (complex where needed); None where it is undefined."""
    try:
        value = sympy.N(expression, _DIGITS)
    except (ArithmeticError, TypeError, ValueError):  # mpmath divides by a zero Float rather than returning zoo
        return None
    return value if value.is_number and value.is_finite else None


def _whole(value: sympy.Expr) -> int | None:
    """|value| when it is a whole number."""
    number = complex(value)
    return abs(round(number.real)) if number.imag == 0 and number.real == round(number.real) else None


def _bounded(expression: object) -> bool:
    """Constant exponents up to _MAX_EXPONENT, numeric powers and function values up to _MAX_MAGNITUDE,
    factorials of numbers up to _MAX_FACTORIAL, and at most _MAX_DEGREE and _MAX_TERMS as a polynomial once
    expanded. Inner nodes are checked first, so no check evaluates a tower like 9^(9^9)."""
    if not isinstance(expression, sympy.Basic):
        return True  # a matrix: the time limit alone bounds it
    terms: dict[sympy.Basic, int] = {}
    degree: dict[sympy.Basic, int] = {}
    for node in sympy.postorder_traversal(expression):
        parts = [terms.get(arg, 1) for arg in node.args]
        degrees = [degree.get(arg, 0) for arg in node.args]
        if isinstance(node, sympy.Symbol):
            terms[node], degree[node] = 1, 1
            continue
        if isinstance(node, sympy.Pow):
            power = None
            if node.exp.is_number:
                exponent = _value(node.exp)
                if exponent is None or abs(exponent) > _MAX_EXPONENT:
                    return False
                power = _whole(exponent)
            if node.is_number and ((value := _value(node)) is None or abs(value) > _MAX_MAGNITUDE):
                return False
            base_terms = parts[0]
            expanded = math.comb(power + base_terms - 1, base_terms - 1) if power and base_terms > 1 else base_terms
            terms[node], degree[node] = min(expanded, _MAX_TERMS + 1), degrees[0] * (power or 1)
        elif isinstance(node, sympy.Mul):
            terms[node], degree[node] = min(math.prod(parts), _MAX_TERMS + 1), sum(degrees)
        else:
            terms[node], degree[node] = min(sum(parts) or 1, _MAX_TERMS + 1), max(degrees, default=0)
        if isinstance(node, sympy.factorial) and node.args[0].is_number:
            value = _value(node.args[0])
            if value is None or abs(value) > _MAX_FACTORIAL:
                return False
        if isinstance(node, sympy.Function) and node.is_number:
            value = _value(node)
            if value is not None and abs(value) > _MAX_MAGNITUDE:
                return False
        if terms[node] > _MAX_TERMS or degree[node] > _MAX_DEGREE:
            return False
    return True


def _parse_math(text: str) -> object | None:
    """A sympy object for `text`: numbers as `parse_number` reads them (exact, or a Float when written with a
    point or an exponent), anything else through math-verify's LaTeX parser; None when unreadable or out of
    bounds. Runs in the sandbox."""
    from math_verify import LatexExtractionConfig, parse

    text = text.strip()
    if (number := parse_number(text)) is not None:
        value = number.value / 100 if number.percent else number.value
        exact = sympy.Rational(value.numerator, value.denominator)
        return sympy.Float(exact, _DIGITS) if number.decimal else exact
    if "$" in text:
        return None
    text = _PLAIN_FUNCTION.sub(r"\\\1", _PLAIN_ABS.sub(r"|\1|", text.replace("**", "^")))
    parsed = parse(f"${text}$", [LatexExtractionConfig()], fallback_mode="no_fallback", parsing_timeout=None)
    if not parsed or isinstance(parsed[0], str) or not _bounded(parsed[0]):
        return None
    return parsed[0]


def _equivalent(predicted: str, truth: str) -> bool | None:
    """Runs in the sandbox: whether math-verify finds the two equivalent; None when the truth is unreadable."""
    from math_verify import verify

    expected = _parse_math(truth)
    if expected is None:
        return None
    got = _parse_math(predicted)
    return got is not None and bool(verify(expected, got, timeout_seconds=None))


def serve_sandbox() -> None:
    """The sandbox child's loop: one JSON line [predicted, truth] in, one JSON line out — {"result": true,
    false or null (truth unreadable)} or {"error": ...}. Ends when its parent closes the pipe."""
    import math_verify  # noqa: F401  (imported before "ready", outside any call's time limit)

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # its "timeouts are off" warning: we are the timeout
    replies, sys.stdout = sys.stdout, sys.stderr  # whatever else prints must not corrupt the replies
    print(json.dumps("ready"), file=replies, flush=True)
    for line in sys.stdin:
        try:
            reply = {"result": _equivalent(*json.loads(line))}
        except Exception as exc:  # reported to the parent, which raises it; the child keeps serving
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), file=replies, flush=True)


class _Sandbox:
    """A child Python process that compares expressions one at a time under a wall-clock limit. A call that
    overruns gets the child killed, which also stops C-level work no signal can interrupt (a big-integer power),
    and the next call starts a fresh child. A plain subprocess, not multiprocessing: spawning through
    multiprocessing re-imports the caller's main module, which fails in scripts without a main guard."""

    _COMMAND = "from mpo.grading.verifiers import serve_sandbox; serve_sandbox()"

    def __init__(self) -> None:
        self._process: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def _child(self) -> subprocess.Popen[str]:
        if self._process is None or self._process.poll() is not None:
            process = subprocess.Popen(
                # -P: the working directory first on sys.path could shadow the installed package
                [sys.executable, "-P", "-c", self._COMMAND],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert process.stdout is not None
            if process.stdout.readline() != json.dumps("ready") + "\n":
                process.kill()
                raise RuntimeError(f"the math verifier's sandbox did not start (exit code {process.wait()})")
            self._process = process
        return self._process

    def equivalent(self, predicted: str, truth: str, limit: float) -> bool | None:
        """`_equivalent(predicted, truth)` in the child; TimeoutError after `limit` seconds."""
        with self._lock:
            process = self._child()
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(json.dumps([predicted, truth]) + "\n")
            process.stdin.flush()
            readable, _, _ = select.select([process.stdout], [], [], limit)
            if not readable:
                process.kill()
                process.wait()
                self._process = None
                raise TimeoutError(f"no result within {limit:g} s")
            reply = json.loads(process.stdout.readline() or "{}")
        if "result" not in reply:
            raise RuntimeError(f"the math verifier's sandbox failed: {reply.get('error', 'it exited')}")
        return reply["result"]


_SANDBOX = _Sandbox()


class MathVerifier:
    """Equivalent mathematical answers, judged by math-verify (LaTeX, fractions, roots, sets, intervals,
    equations, percentages; "x = 2" matches "2"); two plain numbers compare as the numeric verifier does.

    Bounded work on hostile answers: math-verify's own time limits use SIGALRM, which works only in a main
    thread, in whole seconds, and cannot interrupt CPython's C-level big-integer arithmetic (9^(9^9)), while its
    simplify and solve have no bound of their own (a 45-character trigonometric answer took a minute). So the
    parsing and the comparison run in a child process that is killed after `time_limit` seconds (the answer
    then counts as wrong), and cheap bounds reject first what could only use up that time: over 300 characters
    or 8 levels of brackets, exponents over 1000, powers or function values over 1e1000, factorials of numbers
    over 1000, polynomials of degree over 12 or over 200 terms once expanded.
    """

    name = "math"

    def __init__(self, rel_tol: float = 1e-6, time_limit: float = 5.0) -> None:
        self.numeric = NumericVerifier(rel_tol)
        self.time_limit = time_limit

    def verify(self, predicted: str, truth: str, choices: list[str] | None = None) -> bool:
        got_number, expected_number = parse_number(predicted), parse_number(truth)
        if got_number is not None and expected_number is not None:
            return self.numeric.numbers_match(got_number, expected_number)
        if (problem := _beyond_limits(truth)) is not None:
            raise ValueError(f"math verifier: the truth {problem}")
        if _beyond_limits(predicted) is not None:
            return False
        try:
            outcome = _SANDBOX.equivalent(predicted, truth, self.time_limit)
        except TimeoutError:
            return False
        if outcome is None:
            raise ValueError(f"math verifier: the truth {truth!r} is not a supported expression")
        return outcome


# --- registry ----------------------------------------------------------------------------------------------------

#: Not a verifier: picks multiple_choice, numeric or exact per record.
AUTO = "auto"
VERIFIERS: dict[str, Verifier] = {}
#: Task name -> verifier name (or AUTO). Tasks without ground truth ("describe") have none.
TASK_VERIFIERS: dict[str, str] = {"arith": "numeric", "shapes": AUTO}


def register_verifier(verifier: Verifier) -> Verifier:
    """Make `verifier` available by its name; names are unique so that a task's mapping is unambiguous."""
    return register_named(VERIFIERS, verifier, "verifier", reserved=(AUTO,))


for _verifier in (MultipleChoiceVerifier(), NumericVerifier(), ExactVerifier(), MathVerifier()):
    register_verifier(_verifier)


def pick_verifier(name: str, truth: str, choices: list[str] | None) -> Verifier:
    """The verifier called `name`, or AUTO's choice for this record."""
    if name == AUTO and choices:
        name = "multiple_choice"
    elif name == AUTO:
        name = "numeric" if parse_number(truth) is not None else "exact"
    try:
        return VERIFIERS[name]
    except KeyError:
        raise KeyError(f"unknown verifier {name!r}; registered: {', '.join(sorted(VERIFIERS))}, {AUTO}") from None


def verify_with(name: str, predicted: str, truth: str, choices: list[str] | None) -> tuple[bool, str]:
    """(correct, name of the verifier used) under the verifier called `name` (or AUTO)."""
    verifier = pick_verifier(name, truth, choices)
    return verifier.verify(predicted, truth, choices), verifier.name


def verify_answer(predicted: str, truth: str, choices: list[str] | None, task: str) -> tuple[bool, str]:
    """(correct, name of the verifier used) under the verifier `TASK_VERIFIERS` maps `task` to."""
    try:
        name = TASK_VERIFIERS[task]
    except KeyError:
        known = ", ".join(sorted(TASK_VERIFIERS))
        raise KeyError(f"no verifier for task {task!r}; known tasks: {known} (map it in TASK_VERIFIERS)") from None
    return verify_with(name, predicted, truth, choices)
