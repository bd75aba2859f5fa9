"""Answer normalisers: a data set's answer column as the final answer a verifier compares against.

Chosen by name with ``data.answer_format``; each takes the answer text and returns the final answer, or
raises ValueError saying why it cannot (the loader reports that row as bad, naming the answer column).
"""

from __future__ import annotations

import re
from collections.abc import Callable

#: A comma between digits (thousands separator): GSM8K writes "#### 1,200"; verifiers compare "1200".
_THOUSANDS = re.compile(r"(?<=\d),(?=\d)")


def _none(answer: str) -> str:
    return answer


def _gsm8k(answer: str) -> str:
    """The text after the last ``####`` (GSM8K puts its rationale first), stripped, commas in numbers removed."""
    _, marker, final = answer.rpartition("####")
    if not marker:
        raise ValueError("no '####' in the answer (answer_format gsm8k expects '<rationale> #### <final answer>')")
    final = _THOUSANDS.sub("", final.strip())
    if not final:
        raise ValueError("nothing after the last '####' (answer_format gsm8k)")
    return final


#: Name (``data.answer_format``) -> normaliser. Keys match `mpo.config.AnswerFormat`.
ANSWER_FORMATS: dict[str, Callable[[str], str]] = {"none": _none, "gsm8k": _gsm8k}
