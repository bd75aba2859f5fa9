"""The one way a run config's prompts are loaded: StartRun, `mpo run`'s pre-flight and anything else that
runs on a config call :func:`load_split`, so they all see the same records, ids and bad rows."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Literal

from mpo.config import DataConfig
from mpo.data.loader import LoadResult, load_prompts


def load_split(
    data: DataConfig,
    split: Literal["train", "heldout"],
    *,
    image_dir: Path | None,
    known_tasks: Collection[str] | None = None,
) -> LoadResult:
    """One split of ``data`` with its column mapping, default task, answer format and bad-row policy
    (`mpo.data.loader.load_prompts`); image bytes are written under ``image_dir`` (a run's:
    ``<store_dir>/images``). Raises `mpo.data.loader.DataError` for data that cannot be used."""
    return load_prompts(
        data.train if split == "train" else data.heldout,
        on_bad_row="skip" if data.skip_bad_rows else "reject",
        known_tasks=known_tasks,
        columns=None if data.columns is None else data.columns.model_dump(exclude_none=True),
        task=data.task,
        answer_format=data.answer_format,
        image_dir=image_dir,
    )
