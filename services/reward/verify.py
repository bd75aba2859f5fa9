"""Minimal answer matching used by held-out evaluation; the reward service's verifier registry grows
from here (multiple choice, numbers, normalised text).
"""

from __future__ import annotations

import re

_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def _normalise(text: str) -> str:
    return " ".join(text.lower().strip().strip(".").split())


def _as_number(text: str) -> float | None:
    cleaned = text.replace(",", "").strip()
    return float(cleaned) if _NUMBER.fullmatch(cleaned) else None


def _choice_index(text: str, choices: list[str]) -> int | None:
    """Option letter ("B", "(B)", "B)") or the option's own text."""
    letter = re.fullmatch(r"\(?([A-Za-z])\)?[.)]?", text.strip())
    if letter:
        index = ord(letter.group(1).upper()) - ord("A")
        return index if 0 <= index < len(choices) else None
    normalised = _normalise(text)
    return next((i for i, option in enumerate(choices) if _normalise(option) == normalised), None)


def answers_match(predicted: str, truth: str, choices: list[str] | None = None) -> bool:
    if choices:
        expected = _choice_index(truth, choices)
        return expected is not None and _choice_index(predicted, choices) == expected
    predicted_number, true_number = _as_number(predicted), _as_number(truth)
    if true_number is not None:
        return predicted_number is not None and abs(predicted_number - true_number) <= 1e-6 * max(1.0, abs(true_number))
    return _normalise(predicted) == _normalise(truth)
