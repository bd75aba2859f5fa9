"""What goes wrong when prompt data is read: one problem in one row, and data that cannot be loaded at all.

Their own module because every reader (formats, column mapping, image store, loader) raises them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple


class BadRow(NamedTuple):
    """One problem in one row, located so the user can open the file at that line."""

    source: str  # file path, or the `datasets` directory
    line: int  # 1-based physical line (JSONL) or 1-based row number (every other format; CSV: without the header)
    field: str  # the SOURCE column, dotted: "question", "decoded_image", "images[1]", "meta.x"; "<row>": whole row
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.field}: {self.reason}"


class DataError(ValueError):
    """Prompt data that cannot be loaded; ``bad_rows`` holds every row problem (empty for file-level errors)."""

    def __init__(self, message: str, bad_rows: Iterable[BadRow] = ()) -> None:
        super().__init__(message)
        self.bad_rows: list[BadRow] = list(bad_rows)
