"""The text of the user turn: the paper's chain-of-thought instruction, then the question.

`mpo/chat.py` turns it into a model's chat template; this module only says what the turn says.
"""

from __future__ import annotations

import re

COT_INSTRUCTION = (
    "Your task is to answer the question below. Give step by step reasoning before you answer, and when "
    'you\'re ready to answer, please use the format "Final answer: .."'
)

#: Trailing answer-format instructions that users' questions often carry; the CoT template replaces them.
_TRAILING_FORMAT = re.compile(
    r"\s*(?:answer with [^.?!]*|please answer [^.?!]*|answer the question using a single word or phrase)[.!]?\s*$",
    re.IGNORECASE,
)


def strip_answer_format(question: str) -> str:
    return _TRAILING_FORMAT.sub("", question).strip()


def user_text(question: str, instruction: str = COT_INSTRUCTION) -> str:
    """The instruction and the question without its own answer-format instruction (which the instruction
    replaces); with no instruction, the question as written."""
    return f"{instruction}\n\n{strip_answer_format(question)}" if instruction else question
