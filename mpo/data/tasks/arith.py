"""`arith`: multi-step integer arithmetic (+, -, *, parentheses) with step-by-step demonstrations.

Why this shape: a tiny policy must learn the easy items (one operation on small numbers) and mostly fail
the hard ones (three or four operations, two-digit products, parentheses), and there must be several
valid orders of evaluation so that sampling explores different lines of reasoning. Every intermediate
value stays in [0, MAX_VALUE], so no negative numbers ever appear in questions or demonstrations.

An expression is a `Sum` of signed `Term`s; a term is a product of factors; a factor is an integer or a
parenthesised `Sum` with at least two terms. `meta["tree"]` keeps that structure as plain JSON.
"""

from __future__ import annotations

import ast
import copy
import random
import re
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any, Literal

from mpo.data.records import PromptRecord
from mpo.data.tasks._common import derive_seed

# --- difficulty knobs -------------------------------------------------------------------------------
#: Share of items per number of operations (35% have three or four; one-step items are the easy tier).
OP_COUNT_WEIGHTS: dict[int, float] = {1: 0.35, 2: 0.30, 3: 0.20, 4: 0.15}
#: How a random expression grows by one operation: a new +/- term, a new * factor, or a number that
#: becomes a parenthesised two-term sum (inside a product, or after a minus sign).
EXPANSION_WEIGHTS: dict[str, float] = {"term": 0.50, "factor": 0.30, "paren": 0.20}
#: Chance that a new term is subtracted rather than added.
MINUS_P = 0.4
#: Operands of sums ("mostly 1-20"); BIG_OPERAND_P of them come from BIG_OPERAND_RANGE instead.
ADD_OPERAND_RANGE = (1, 20)
BIG_OPERAND_RANGE = (21, 60)
BIG_OPERAND_P = 0.05
#: Operands of products (the times tables a tiny model can memorise; products of three factors
#: and parenthesised sums still reach three digits).
MUL_OPERAND_RANGE = (2, 9)
#: Every intermediate value lies in [0, MAX_VALUE] (at most three digits).
MAX_VALUE = 999
#: Chance that a demonstration follows the textbook left-to-right order instead of a random valid one.
CANONICAL_ORDER_P = 0.3
#: Chance that a demonstration writes a commutative step with its operands swapped ("3 + 7" as "7 + 3").
SWAP_P = 0.25

QUESTION_TEMPLATES = ("What is {expr}?", "Compute {expr}.", "Calculate {expr}.")
FIRST_WORDS = ("", "First, ")
MIDDLE_WORDS = ("", "Then ", "Next, ")
LAST_WORDS = ("", "So ", "Finally, ")


@dataclass
class Sum:
    terms: list[Term]


@dataclass
class Term:
    sign: int  # +1 or -1; the first term of a sum is always +1
    factors: list[int | Sum] = field(default_factory=list)

    @property
    def is_number(self) -> bool:
        return len(self.factors) == 1 and isinstance(self.factors[0], int)


# --- structure <-> JSON / text ----------------------------------------------------------------------


def tree_to_json(expr: Sum) -> dict[str, Any]:
    return {
        "terms": [
            {
                "sign": "+" if term.sign > 0 else "-",
                "factors": [f if isinstance(f, int) else tree_to_json(f) for f in term.factors],
            }
            for term in expr.terms
        ]
    }


def tree_from_json(data: dict[str, Any]) -> Sum:
    return Sum(
        [
            Term(
                1 if term["sign"] == "+" else -1,
                [f if isinstance(f, int) else tree_from_json(f) for f in term["factors"]],
            )
            for term in data["terms"]
        ]
    )


def render(expr: Sum) -> str:
    out = []
    for index, term in enumerate(expr.terms):
        text = " * ".join(str(f) if isinstance(f, int) else f"({render(f)})" for f in term.factors)
        out.append(text if index == 0 else f"{'+' if term.sign > 0 else '-'} {text}")
    return " ".join(out)


def count_ops(expr: Sum) -> int:
    ops = len(expr.terms) - 1
    for term in expr.terms:
        ops += len(term.factors) - 1
        ops += sum(count_ops(f) for f in term.factors if isinstance(f, Sum))
    return ops


def value(expr: Sum) -> int:
    total = 0
    for term in expr.terms:
        product = 1
        for f in term.factors:
            product *= f if isinstance(f, int) else value(f)
        total += term.sign * product
    return total


# --- random expressions -----------------------------------------------------------------------------


def _sums(expr: Sum) -> list[Sum]:
    found = [expr]
    for term in expr.terms:
        for f in term.factors:
            if isinstance(f, Sum):
                found.extend(_sums(f))
    return found


def _terms(expr: Sum) -> list[Term]:
    return [term for s in _sums(expr) for term in s.terms]


def _random_shape(rng: random.Random, n_ops: int) -> Sum:
    """Grow an expression one operation at a time; numbers are placeholders (0) until `_fill`."""
    root = Sum([Term(1, [0])])
    for _ in range(n_ops):
        terms = _terms(root)
        paren_targets = [
            (term, i)
            for term in terms
            for i, f in enumerate(term.factors)
            if isinstance(f, int) and (len(term.factors) >= 2 or term.sign < 0)
        ]
        kinds = [k for k in EXPANSION_WEIGHTS if k != "paren" or paren_targets]
        kind = rng.choices(kinds, weights=[EXPANSION_WEIGHTS[k] for k in kinds])[0]
        if kind == "term":
            target = rng.choice(_sums(root))
            sign = -1 if rng.random() < MINUS_P else 1
            target.terms.insert(rng.randint(1, len(target.terms)), Term(sign, [0]))
        elif kind == "factor":
            term = rng.choice(terms)
            term.factors.insert(rng.randint(0, len(term.factors)), 0)
        else:
            term, i = rng.choice(paren_targets)
            term.factors[i] = Sum([Term(1, [0]), Term(-1 if rng.random() < MINUS_P else 1, [0])])
    return root


def _fill(rng: random.Random, expr: Sum) -> None:
    for term in _terms(expr):
        for i, f in enumerate(term.factors):
            if isinstance(f, int):
                if len(term.factors) >= 2:
                    term.factors[i] = rng.randint(*MUL_OPERAND_RANGE)
                elif rng.random() < BIG_OPERAND_P:
                    term.factors[i] = rng.randint(*BIG_OPERAND_RANGE)
                else:
                    term.factors[i] = rng.randint(*ADD_OPERAND_RANGE)


# --- step-by-step evaluation ------------------------------------------------------------------------

Kind = Literal["add", "mul"]


@dataclass(frozen=True)
class _Move:
    kind: Kind
    node: Any  # the Sum (add) or Term (mul) that holds both operands
    i: int
    j: int


def _moves(expr: Sum) -> list[_Move]:
    """Every step a careful solver may take next: combine two number terms of a sum (any two: sums
    are commutative), or multiply two integer factors of a product, anywhere in the tree."""
    found = [_Move("add", expr, i, j) for i, j in combinations([k for k, t in enumerate(expr.terms) if t.is_number], 2)]
    for term in expr.terms:
        if len(term.factors) >= 2:
            ints = [k for k, f in enumerate(term.factors) if isinstance(f, int)]
            found.extend(_Move("mul", term, i, j) for i, j in combinations(ints, 2))
        for f in term.factors:
            if isinstance(f, Sum):
                found.extend(_moves(f))
    return found


def _canonical_move(expr: Sum) -> _Move:
    """The textbook order: innermost and leftmost first, products before sums, left to right."""
    pending = next((k for k, t in enumerate(expr.terms) if not t.is_number), None)
    if pending is None or pending >= 2:
        return _Move("add", expr, 0, 1)
    term = expr.terms[pending]
    sub = next((k for k, f in enumerate(term.factors) if not isinstance(f, int)), None)
    if sub is None or sub >= 2:
        return _Move("mul", term, 0, 1)
    inner = term.factors[sub]
    assert isinstance(inner, Sum)
    return _canonical_move(inner)


def _outcome(move: _Move) -> tuple[int, int, str]:
    """What a move would produce, without applying it: (sign, magnitude, left-hand side text).
    Mixed signs are written as the larger magnitude minus the smaller, so no negative number is shown."""
    if move.kind == "mul":
        a, b = move.node.factors[move.i], move.node.factors[move.j]
        return 1, a * b, f"{a} * {b}"
    ti, tj = move.node.terms[move.i], move.node.terms[move.j]
    p, q = ti.factors[0], tj.factors[0]
    if ti.sign == tj.sign:
        return ti.sign, p + q, f"{p} + {q}"
    pos, neg = (p, q) if ti.sign > 0 else (q, p)
    if pos >= neg:
        return 1, pos - neg, f"{pos} - {neg}"
    return -1, neg - pos, f"{neg} - {pos}"


def _apply(move: _Move) -> tuple[int, int, str]:
    """Apply a move in place; returns (sign, magnitude, operand text) of the new number."""
    sign, result, text = _outcome(move)
    if move.kind == "mul":
        move.node.factors[move.i] = result
        del move.node.factors[move.j]
    else:
        move.node.terms[move.i] = Term(sign, [result])
        del move.node.terms[move.j]
    return sign, result, text


def _collapse(expr: Sum) -> None:
    """A parenthesised sum that is down to one number becomes that number."""
    for term in expr.terms:
        for k, f in enumerate(term.factors):
            if isinstance(f, Sum):
                _collapse(f)
                if len(f.terms) == 1 and f.terms[0].is_number and f.terms[0].sign > 0:
                    term.factors[k] = f.terms[0].factors[0]


def _done(expr: Sum) -> bool:
    return len(expr.terms) == 1 and expr.terms[0].is_number


def _maybe_swap(text: str, rng: random.Random | None) -> str:
    if rng is None or rng.random() >= SWAP_P:
        return text
    for op in (" + ", " * "):
        if op in text:
            a, b = text.split(op)
            return f"{b}{op}{a}"
    return text


def canonical_steps(expr: Sum) -> list[str] | None:
    """Steps in textbook order, or None when any intermediate leaves [0, MAX_VALUE]."""
    state, steps = copy.deepcopy(expr), []
    while not _done(state):
        move = _canonical_move(state)
        sign, result, text = _apply(move)
        if sign < 0 or result > MAX_VALUE:  # a canonical running total below zero, or too large
            return None
        steps.append(f"{text} = {result}")
        _collapse(state)
    return steps


def random_steps(expr: Sum, rng: random.Random, attempts: int = 10) -> list[str] | None:
    """Steps in a random valid order (any move whose result stays within MAX_VALUE)."""
    for _ in range(attempts):
        state, steps = copy.deepcopy(expr), []
        while not _done(state):
            moves = [m for m in _moves(state) if _outcome(m)[1] <= MAX_VALUE]
            if not moves:
                break
            _, result, text = _apply(rng.choice(moves))
            steps.append(f"{_maybe_swap(text, rng)} = {result}")
            _collapse(state)
        else:
            return steps
    return None


def phrase(steps: list[str], answer: str, rng: random.Random) -> str:
    """Join steps with lightly varied connectors; the answer goes on its own final line."""
    parts = []
    for k, step in enumerate(steps):
        if len(steps) == 1:
            lead = ""
        elif k == len(steps) - 1:
            lead = rng.choice(LAST_WORDS)
        elif k == 0:
            lead = rng.choice(FIRST_WORDS)
        else:
            lead = rng.choice(MIDDLE_WORDS)
        parts.append(f"{lead}{step}.")
    return " ".join(parts) + f"\nFinal answer: {answer}"


# --- checking a derivation --------------------------------------------------------------------------

#: A step as demonstrations write it: "a op b = c" with plain integers.
STEP_RE = re.compile(r"(?<![\d.])(\d+) ([-+*]) (\d+) = (\d+)(?![\d.]\d)")
#: The expression inside a question ("What is 3 + 4 * 2?"): the longest run of digits, operators,
#: parentheses and spaces that holds an operator.
_EXPRESSION_RE = re.compile(r"[\d(][\d\s+\-*()]*[\d)]")


def _sum_from_ast(node: ast.expr) -> list[Term]:
    """+ and - associate to the left, so a +/- expression as a right operand was parenthesised."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
        return [
            *_sum_from_ast(node.left),
            Term(1 if isinstance(node.op, ast.Add) else -1, _factors_from_ast(node.right)),
        ]
    return [Term(1, _factors_from_ast(node))]


def _factors_from_ast(node: ast.expr) -> list[int | Sum]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        return [*_factors_from_ast(node.left), *_factors_from_ast(node.right)]
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
        return [Sum(_sum_from_ast(node))]
    if isinstance(node, ast.Constant) and type(node.value) is int and node.value >= 0:
        return [node.value]
    raise ValueError(f"not an arith expression: {ast.unparse(node)!r}")


def parse_expression(text: str) -> Sum:
    """The tree of an expression as `render` writes it (ValueError for anything else)."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise ValueError(f"not an arith expression: {text!r}") from exc
    return Sum(_sum_from_ast(node))


def question_expression(question: str) -> Sum:
    """The expression an arith question asks for (ValueError when it holds none)."""
    runs = [m[0] for m in _EXPRESSION_RE.finditer(question) if any(op in m[0] for op in "+-*")]
    if not runs:
        raise ValueError(f"no arithmetic expression in the question {question!r}")
    return parse_expression(max(runs, key=len))


def _matches(move: _Move, a: int, op: str, b: int, result: int) -> bool:
    _, got, text = _outcome(move)
    stated = {f"{a} {op} {b}"} | ({f"{b} {op} {a}"} if op in "+*" else set())
    return got == result and text in stated


def _replays(state: Sum, steps: list[tuple[int, str, int, int]]) -> bool:
    if not steps:
        return _done(state)
    a, op, b, result = steps[0]
    for k, move in enumerate(_moves(state)):
        if not _matches(move, a, op, b, result):
            continue
        branch = copy.deepcopy(state)
        _apply(_moves(branch)[k])  # the same move, found again in the copy
        _collapse(branch)
        if _replays(branch, steps[1:]):
            return True
    return False


def derivation_holds(expr: Sum, rationale: str) -> bool:
    """Whether the rationale's steps, in order, are a complete valid evaluation of `expr`: each combines
    two numbers the expression holds at that point (as `_moves` allows) and states the right result.
    A right final answer reached any other way (a false step, an operand that is not there, a skipped
    operation) does not hold."""
    steps = [(int(a), op, int(b), int(c)) for a, op, b, c in STEP_RE.findall(rationale)]
    return _replays(copy.deepcopy(expr), steps)


# --- the task ---------------------------------------------------------------------------------------


def sample_expression(rng: random.Random, n_ops: int) -> tuple[Sum, list[str]]:
    """A random expression with exactly `n_ops` operations whose textbook evaluation stays in range."""
    while True:
        shape = _random_shape(rng, n_ops)
        for _ in range(50):
            expr = copy.deepcopy(shape)
            _fill(rng, expr)
            steps = canonical_steps(expr)
            if steps is not None:
                return expr, steps


class ArithTask:
    """Text-only arithmetic with ground truth (an integer string)."""

    name = "arith"
    has_images = False
    bootstrap_ema_decay = 0.0  # still improving at the end of the schedule; an average lags it (+9.5 points)

    def generate(self, n: int, seed: int, image_dir: Path | None = None) -> list[PromptRecord]:
        ops_choices, ops_weights = list(OP_COUNT_WEIGHTS), list(OP_COUNT_WEIGHTS.values())
        records = []
        for i in range(n):
            rng = random.Random(derive_seed(self.name, seed, i))  # item i does not depend on n
            n_ops = rng.choices(ops_choices, weights=ops_weights)[0]
            expr, steps = sample_expression(rng, n_ops)
            text = render(expr)
            answer = str(value(expr))
            records.append(
                PromptRecord(
                    id=f"{self.name}-{seed}-{i:06d}",
                    question=rng.choice(QUESTION_TEMPLATES).format(expr=text),
                    answer=answer,
                    task=self.name,
                    meta={"expression": text, "tree": tree_to_json(expr), "num_ops": n_ops, "steps": steps},
                )
            )
        return records

    def demonstration(self, record: PromptRecord, rng: random.Random) -> str | None:
        expr = tree_from_json(record.meta["tree"])
        steps = None if rng.random() < CANONICAL_ORDER_P else random_steps(expr, rng)
        if steps is None:
            steps = list(record.meta["steps"])
        return phrase(steps, str(record.answer), rng)

    def key(self, record: PromptRecord) -> str:
        """The expression itself: two phrasings of one sum are the same problem."""
        return str(record.meta["expression"])
