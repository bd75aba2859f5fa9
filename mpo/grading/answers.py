"""Final-answer extraction: the answer a response states, with the rationale before it.

Tried in this order, the first form present deciding:
1. "Final answer:" (any case, bold markers allowed): the text after the *last* one, on one line. Once the
   marker is there, its rules alone decide, so a response with a malformed final answer is unparsable even
   if it also boxes something.
2. `reward.answer_pattern` when configured: the capture group of the last match of that regular expression.
3. `\\boxed{...}`: the content of the last one whose braces balance (a \\boxed inside another is part of the
   outer one).
Whatever the form, the rationale before the answer must not be blank (a bare answer is not a chain of
thought), and the answer must not be empty. Anything else is unparsable, which counts as wrong.

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
#: The tokens that decide where a \boxed{...} ends: its opening, and every brace.
_BOXED_TOKENS = re.compile(r"\\boxed\s*\{|[{}]")


@dataclass(frozen=True)
class Extraction:
    answer: str | None
    #: Why the response is unparsable; None when `answer` is set.
    problem: str | None = None
    #: The text before the answer (before the last "Final answer:", the pattern's match or the \boxed);
    #: empty when unparsable.
    rationale: str = ""

    @property
    def parsable(self) -> bool:
        return self.answer is not None


def compile_answer_pattern(pattern: str) -> re.Pattern[str]:
    """`reward.answer_pattern` compiled; ValueError unless it is a regular expression with exactly one
    capture group (the answer)."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None
    if compiled.groups != 1:
        raise ValueError(f"needs exactly one capture group (the answer), found {compiled.groups}")
    return compiled


def extract_final_answer(response: str, pattern: re.Pattern[str] | None = None) -> Extraction:
    """The answer `response` states, in the order of the module docstring; `pattern` is the compiled
    `reward.answer_pattern` (see `compile_answer_pattern`), None when not configured."""
    matches = list(_MARKER_RE.finditer(response))
    if matches:
        last = matches[-1]
        tail = response[last.end() :]
        if "\n" in tail.strip():
            return Extraction(None, "final answer spans several lines")
        return _answer(response[: last.start()], tail, "'Final answer:'")
    if pattern is not None:
        found = [match for match in pattern.finditer(response) if match.group(1) is not None]
        if found:
            return _answer(response[: found[-1].start()], found[-1].group(1), "the answer pattern's match")
    if (boxed := _last_boxed(response)) is not None:
        start, content = boxed
        return _answer(response[:start], content, "\\boxed{...}")
    if pattern is not None:
        return Extraction(None, "no 'Final answer:', no match of the answer pattern and no \\boxed{...}")
    return Extraction(None, "no 'Final answer:' and no \\boxed{...}")


def _answer(rationale: str, raw: str, where: str) -> Extraction:
    if not rationale.strip(_NOT_RATIONALE):
        return Extraction(None, f"no rationale before {where}")
    answer = _unwrap(raw)
    if not answer:
        return Extraction(None, f"empty answer in {where}")
    return Extraction(answer, rationale=rationale)


def _last_boxed(text: str) -> tuple[int, str] | None:
    """(start of "\\boxed", content) of the \\boxed{...} that closes last, in one pass (a response with
    thousands of unclosed "\\boxed{" must not cost quadratic time). Closing last makes it the outermost of
    its nest: a \\boxed inside another closes first."""
    found: tuple[int, int, int] | None = None
    #: One entry per open brace: (start of its \boxed, start of the content), or None for a plain brace.
    stack: list[tuple[int, int] | None] = []
    for token in _BOXED_TOKENS.finditer(text):
        if token[0] == "{":
            stack.append(None)
        elif token[0] != "}":
            stack.append((token.start(), token.end()))
        elif stack and (opened := stack.pop()) is not None:
            found = (*opened, token.start())
    return None if found is None else (found[0], text[found[1] : found[2]])


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
