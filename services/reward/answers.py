"""Final-answer extraction (DESIGN §4): the text after the last "Final answer:", on one line, with a
non-empty rationale before it. Anything else is unparsable, which counts as wrong.

Markdown and LaTeX wrappers are not part of the answer: a bold marker ("**Final answer:** 42"), surrounding
"**", "$...$" and "\\boxed{...}" are removed from the answer, as is a trailing ".", so "**\\boxed{42}**." is
"42"; an answer that is nothing but such wrapping is empty.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

MARKER = "Final answer:"
_MARKER_RE = re.compile(r"(?:\*\*)?" + re.escape(MARKER) + r"(?:\*\*)?", re.IGNORECASE)
#: Markdown left around the marker is not a rationale.
_NOT_RATIONALE = string.whitespace + "*#"
_DOLLARS = re.compile(r"\$+([^$]+)\$+")
_BOXED = re.compile(r"\\boxed\{(.*)\}")


@dataclass(frozen=True)
class Extraction:
    answer: str | None
    #: Why the response is unparsable; None when `answer` is set.
    problem: str | None = None
    #: The text before the last "Final answer:" (empty when unparsable).
    rationale: str = ""

    @property
    def parsable(self) -> bool:
        return self.answer is not None


def extract_final_answer(response: str) -> Extraction:
    matches = list(_MARKER_RE.finditer(response))
    if not matches:
        return Extraction(None, "no 'Final answer:'")
    last = matches[-1]
    rationale, tail = response[: last.start()], response[last.end() :]
    if not rationale.strip(_NOT_RATIONALE):
        return Extraction(None, "no rationale before 'Final answer:'")
    if "\n" in tail.strip():
        return Extraction(None, "final answer spans several lines")
    answer = _unwrap(tail)
    if not answer:
        return Extraction(None, "empty final answer")
    return Extraction(answer, rationale=rationale)


def _unwrap(answer: str) -> str:
    """Peel off wrappers and trailing dots until nothing changes."""
    while True:
        previous = answer
        answer = answer.strip().strip("*").strip().rstrip(".").strip()
        if dollars := _DOLLARS.fullmatch(answer):
            answer = dollars[1]
        elif (boxed := _BOXED.fullmatch(answer)) and _balanced(boxed[1]):
            answer = boxed[1]
        if answer == previous:
            return answer


def _balanced(text: str) -> bool:
    depth = 0
    for char in text:
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0
