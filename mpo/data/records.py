"""The one prompt-record format shared by built-in tasks, users' files and the services.

On disk a record is a JSONL line or a Parquet / `datasets` row with these columns; image paths are
relative to the file that lists them (or absolute).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class PromptRecord(BaseModel):
    """One question for the policy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(..., min_length=1, description="Unique within its data set.")
    question: str = Field(..., min_length=1, description="Question text without answer-format instructions.")
    images: list[Path] = Field(default_factory=list, description="Image files, resolved to absolute paths on load.")
    answer: str | None = Field(None, description="Ground-truth final answer; None for open-ended prompts.")
    choices: list[str] | None = Field(None, description="Options of a multiple-choice question (A, B, ...).")
    task: str = Field(..., min_length=1, description="Task name; selects the verifier.")
    meta: dict[str, Any] = Field(
        default_factory=dict, description="Task-specific structure (built-in tasks keep their solution here)."
    )

    @field_validator("question")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value


#: Column order used when writing records.
COLUMNS = ("id", "question", "images", "answer", "choices", "task", "meta")
