"""Answer verifiers (issue #6): does an extracted final answer match a record's ground truth?

Verifiers are pure and cheap. A prediction a verifier cannot read is wrong; a ground truth it cannot read
raises ValueError, because a data bug must not silently score every sample as wrong. `TASK_VERIFIERS` picks
a task's verifier by name; "auto" picks per record: multiple_choice when the record has choices, numeric when
the truth is a number, else exact.

Adding a verifier: write a class with a unique `name` and `verify(predicted, truth, choices) -> bool`, call
`register_verifier(MyVerifier())` where your module is imported, and map tasks to it with
`TASK_VERIFIERS["my_task"] = "my_name"` (or pass the name to `verify_with`).
"""

from __future__ import annotations

import random
import re
import string
import unicodedata
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol, runtime_checkable

import sympy
from sympy.parsing.sympy_parser import convert_xor, implicit_multiplication, parse_expr, standard_transformations


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
    return Number(-value if match["sign"] == "-" else value, bool(match["percent"]), integer)


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


# --- expressions -------------------------------------------------------------------------------------------------

_MAX_EXPRESSION_CHARS = 200
#: Bounds checked before anything is evaluated, so that answers like "9^9^9" cannot hang the service.
_MAX_EXPONENT = 1000
_MAX_MAGNITUDE = sympy.Float("1e1000")
_MAX_DEGREE = 1000
#: Points at which expressions with variables are compared, and the digits each evaluation keeps.
_SAMPLES, _DIGITS = 5, 30
_TRANSFORMATIONS = (*standard_transformations, implicit_multiplication, convert_xor)
_FUNCTIONS: dict[str, object] = {
    "sqrt": sympy.sqrt,
    "sin": sympy.sin,
    "cos": sympy.cos,
    "tan": sympy.tan,
    "log": sympy.log,
    "ln": sympy.log,
    "abs": sympy.Abs,
    "pi": sympy.pi,
    "e": sympy.E,
}
#: What names may mean: the functions and constants above, and single letters as plain symbols (so that
#: "I", "N", "S", "O" or "Q" are not sympy's objects).
_NAMESPACE = {letter: sympy.Symbol(letter) for letter in string.ascii_letters} | _FUNCTIONS
_ALLOWED_CHARS = re.compile(r"[0-9A-Za-z\s+\-*/^().]*")
_LATEX = (
    (re.compile(r"\\left|\\right"), ""),
    (re.compile(r"\\cdot|\\times|\u00d7|\u00b7"), "*"),
    (re.compile(r"\\pi|\u03c0"), "pi"),
    (re.compile(r"\\sqrt(?=\{)"), "sqrt"),
    (re.compile(r"\u2212"), "-"),
)
_FRAC = re.compile(r"\\[dt]?frac(?=\{)")
#: Python that the characters allow but mathematics does not mean: attribute access (points belong in
#: numbers), floor division and empty parentheses (tuples).
_NOT_MATH = re.compile(r"[A-Za-z]\s*\.|\.\s*[A-Za-z]|/\s*/|\(\s*\)")


def _from_latex(text: str) -> str:
    """The LaTeX that simple answers use (\\frac{a}{b}, \\sqrt{x}, x^{2}, \\cdot, \\pi) as plain syntax; any
    other command keeps its backslash and is rejected."""
    for pattern, replacement in _LATEX:
        text = pattern.sub(replacement, text)
    if _FRAC.search(text):  # with "\frac" gone, its "}{" is the only one left: {a}{b} -> (a)/(b)
        text = _FRAC.sub("", text).replace("}{", ")/(")
    return text.replace("{", "(").replace("}", ")")


def parse_expression(text: str) -> sympy.Expr | None:
    """A sympy expression from a whitelist of characters and names, with bounded powers; else None.

    Whitelisting first matters: sympy's parser evaluates Python code."""
    text = _from_latex(text.strip())
    if not text or len(text) > _MAX_EXPRESSION_CHARS or not _ALLOWED_CHARS.fullmatch(text):
        return None
    if _NOT_MATH.search(text):
        return None
    if any(name not in _NAMESPACE for name in re.findall(r"[A-Za-z_]\w*", text)):
        return None
    try:
        expression = parse_expr(text, local_dict=dict(_NAMESPACE), transformations=_TRANSFORMATIONS, evaluate=False)
    except Exception:  # sympy's parser raises many types (SyntaxError, TypeError, TokenError, ...)
        return None
    return expression if _bounded(expression) else None


def _bounded(expression: sympy.Expr) -> bool:
    """Constant exponents up to _MAX_EXPONENT, finite numeric powers up to _MAX_MAGNITUDE and a polynomial
    degree up to _MAX_DEGREE, so that evaluating at the sample points is fast. Inner nodes are checked first,
    so no check evaluates a tower like "9^9^9"."""
    degrees: dict[sympy.Basic, float] = {}
    for node in sympy.postorder_traversal(expression):
        if not isinstance(node, sympy.Expr):
            return False
        if isinstance(node, sympy.Pow):
            if not node.exp.is_number:
                return False
            exponent = _evaluate(node.exp)
            if exponent is None or abs(exponent) > _MAX_EXPONENT:
                return False
            if node.is_number and ((value := _evaluate(node)) is None or abs(value) > _MAX_MAGNITUDE):
                return False
            degrees[node] = degrees[node.base] * float(abs(exponent))
        elif isinstance(node, sympy.Symbol):
            degrees[node] = 1.0
        elif isinstance(node, sympy.Mul):
            degrees[node] = sum(degrees[arg] for arg in node.args)
        else:
            degrees[node] = max((degrees[arg] for arg in node.args), default=0.0)
        if degrees[node] > _MAX_DEGREE:
            return False
    return True


def _evaluate(expression: sympy.Expr, point: dict[sympy.Symbol, sympy.Float] | None = None) -> sympy.Expr | None:
    """The value at `point` to _DIGITS digits (complex where needed); None where it is undefined."""
    try:
        value = sympy.N(expression, _DIGITS, subs=point)
    except ArithmeticError:  # mpmath divides by a zero Float rather than returning zoo
        return None
    return value if value.is_number and value.is_finite else None


def _expression(text: str) -> sympy.Expr | None:
    """A number in any form `parse_number` reads ("1,000", "50%") as an exact rational, else an expression."""
    number = parse_number(text)
    if number is None:
        return parse_expression(text)
    value = number.value / 100 if number.percent else number.value
    return sympy.Rational(value.numerator, value.denominator)


class MathVerifier:
    """Equivalent expressions: numbers as the numeric verifier compares them; otherwise both sides agree
    within `rel_tol` at _SAMPLES fixed pseudo-random points (complex values where roots or logs of negatives
    need them), a probabilistic identity test.

    math_verify is not installed, so sympy does the work, but not `simplify(a - b) == 0`: simplify has no
    time bound on untrusted input ("(x+y+z)^999-1" did not finish in two minutes), while evaluating a bounded
    expression at a point is fast. Names are limited to single letters, pi, e and sqrt/sin/cos/tan/log/ln/abs;
    exponents must be constants (no "e^x"); "=" is rejected, so "x = 2" does not match "2".
    """

    name = "math"

    def __init__(self, rel_tol: float = 1e-6) -> None:
        self.numeric = NumericVerifier(rel_tol)
        self.rel_tol = rel_tol

    def verify(self, predicted: str, truth: str, choices: list[str] | None = None) -> bool:
        got_number, expected_number = parse_number(predicted), parse_number(truth)
        if got_number is not None and expected_number is not None:
            return self.numeric.numbers_match(got_number, expected_number)
        expected = _expression(truth)
        if expected is None:
            raise ValueError(f"math verifier: the truth {truth!r} is not a supported expression")
        got = _expression(predicted)
        return got is not None and self._equivalent(got, expected)

    def _equivalent(self, got: sympy.Expr, expected: sympy.Expr) -> bool:
        symbols = sorted(got.free_symbols | expected.free_symbols, key=str)
        for sample in range(_SAMPLES if symbols else 1):
            point = {symbol: sympy.Float(random.Random(f"{sample}:{symbol}").uniform(-2.5, 2.5)) for symbol in symbols}
            a, b = _evaluate(got, point), _evaluate(expected, point)
            if a is None or b is None or abs(a - b) > self.rel_tol * max(abs(a), abs(b)):
                return False
        return True


# --- registry ----------------------------------------------------------------------------------------------------

#: Not a verifier: picks multiple_choice, numeric or exact per record.
AUTO = "auto"
VERIFIERS: dict[str, Verifier] = {}
#: Task name -> verifier name (or AUTO). Tasks without ground truth ("describe") have none.
TASK_VERIFIERS: dict[str, str] = {"arith": "numeric", "shapes": AUTO}


def register_verifier(verifier: Verifier) -> Verifier:
    """Make `verifier` available by its name; names are unique so that a task's mapping is unambiguous."""
    if verifier.name == AUTO or verifier.name in VERIFIERS:
        raise ValueError(f"the verifier name {verifier.name!r} is taken")
    VERIFIERS[verifier.name] = verifier
    return verifier


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
