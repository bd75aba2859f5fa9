"""Answer matching for held-out evaluation: the reward service's verifiers (`verifiers.py`) with the "auto"
choice, so evaluation needs no task mapping and grades users' own tasks too.
"""

from __future__ import annotations

from mpo.services.reward.verifiers import AUTO, verify_with


def answers_match(predicted: str, truth: str, choices: list[str] | None = None) -> bool:
    """Multiple choice when there are choices, numbers when the truth is one, else normalised text;
    ValueError when the truth is unusable (e.g. names none of the choices)."""
    return verify_with(AUTO, predicted, truth, choices)[0]
