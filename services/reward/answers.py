"""Final-answer extraction (DESIGN §4): the text after the last "Final answer:", on one line, with a
non-empty rationale before it. Anything else is unparsable, which counts as wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MARKER = "Final answer:"
_MARKER_RE = re.compile(re.escape(MARKER), re.IGNORECASE)


@dataclass(frozen=True)
class Extraction:
    answer: str | None
    #: Why the response is unparsable; None when `answer` is set.
    problem: str | None = None

    @property
    def parsable(self) -> bool:
        return self.answer is not None


def extract_final_answer(response: str) -> Extraction:
    matches = list(_MARKER_RE.finditer(response))
    if not matches:
        return Extraction(None, "no 'Final answer:'")
    last = matches[-1]
    rationale, tail = response[: last.start()], response[last.end() :]
    if not rationale.strip():
        return Extraction(None, "no rationale before 'Final answer:'")
    answer = tail.strip()
    if not answer:
        return Extraction(None, "empty final answer")
    if "\n" in answer:
        return Extraction(None, "final answer spans several lines")
    return Extraction(answer.rstrip(".").strip())
