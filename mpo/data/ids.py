"""Ids for rows of a source that has no id column.

Rule: the id is the first 16 hex digits of the SHA-256 of the row's content: its question, answer, choices
and images as they stand in the file (image paths as written, image bytes by their SHA-256), before any
answer normalisation. The k-th repeat of the same content within one load gets ``-k`` (``3f…e1-2``).

Why content and not the row number: the same file gives the same ids on every load and every machine
either way, but a content id also survives what people do to data sets: rows inserted, removed or
reordered, a JSONL converted to Parquet, the file renamed or moved. A prompt keeps its id, so a resumed
run, a held-out report or a pair in the run store still names the same question. Repeats are numbered
in file order (shards in name order), which is as stable as the file itself.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from typing import Any

#: Hex digits kept: 64 bits, so a collision among a million distinct prompts has odds of about 3e-8.
ID_HEX_DIGITS = 16


class IdGenerator:
    """Hands out content ids for one load; counts repeats so every id is unique within it."""

    def __init__(self) -> None:
        self._seen: Counter[str] = Counter()

    def __call__(self, question: Any, answer: Any, choices: Any, images: list[str]) -> str:
        content = json.dumps([question, answer, choices, images], ensure_ascii=False, default=str)
        key = hashlib.sha256(content.encode("utf-8")).hexdigest()[:ID_HEX_DIGITS]
        self._seen[key] += 1
        repeat = self._seen[key]
        return key if repeat == 1 else f"{key}-{repeat}"
