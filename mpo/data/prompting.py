"""The chain-of-thought prompt of the paper (DESIGN §4), shared by rollout, bootstrap and evaluation."""

from __future__ import annotations

import re
from typing import Any

from mpo.data.records import PromptRecord

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


def question_messages(question: str, image_count: int) -> list[dict[str, Any]]:
    """One user turn: an image placeholder per image, then the instruction and the question."""
    parts: list[dict[str, Any]] = [{"type": "image"} for _ in range(image_count)]
    parts.append({"type": "text", "text": f"{COT_INSTRUCTION}\n\n{strip_answer_format(question)}"})
    return [{"role": "user", "content": parts}]


def chat_messages(record: PromptRecord, *, with_images: bool = True) -> list[dict[str, Any]]:
    return question_messages(record.question, len(record.images) if with_images else 0)
