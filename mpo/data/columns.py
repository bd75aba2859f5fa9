"""Which source column feeds each field of a prompt record, resolved once per file against its columns.

Without a mapping (``columns=None``) a source is in the record format itself: its columns are the
record's fields, and any other column is a bad row (most likely a typo). With a mapping (TRL / verl
data sets with their own column names) each mapped field comes from the named column, an unmapped
field from the column of its own name if there is one, and every other column is kept in the record's
``meta`` under its own name (binary columns, such as an unmapped image column, are left out).

Either way, a source without an id column gets generated ids (`mpo.data.ids`), and a source without a
task column needs a default task. File-level problems (a mapped column that does not exist, no task)
are one DataError, raised before any row is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mpo.data.errors import DataError

#: The record fields a mapping may name (``meta`` is built, not mapped).
FIELDS = ("question", "answer", "images", "choices", "id", "task")


@dataclass(frozen=True)
class Layout:
    """How one source's rows become record-format dicts."""

    source_of: dict[str, str]  # record field -> source column, for the fields the source has
    mapped: bool  # a mapping was given: other columns go to meta, a lone image is one image
    generate_ids: bool  # the source has no id column
    default_task: str | None

    def column(self, field: str) -> str:
        """The source column a record field is read from (the field's own name where unmapped)."""
        return self.source_of.get(field, field)

    def record_fields(self, row: dict[str, Any]) -> dict[str, Any]:
        """The row with its columns renamed to record fields; with a mapping, other columns into ``meta``."""
        if not self.mapped:
            return dict(row)
        data = {field: row[column] for field, column in self.source_of.items() if column in row}
        used = set(self.source_of.values())
        data["meta"] = {name: value for name, value in row.items() if name not in used and not _binary(value)}
        return data


def _binary(value: Any) -> bool:
    """Bytes anywhere inside: image data, which has no place in meta (it is neither JSON nor small)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return True
    if isinstance(value, dict):
        return any(_binary(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_binary(item) for item in value)
    return False


def resolve(source: str, present: list[str], columns: Mapping[str, str] | None, task: str | None) -> Layout:
    """The layout of a source with columns ``present``; DataError naming the mapping keys that name missing
    columns (listing the columns there are), or saying how to give a task when there is no task column."""
    listed = ", ".join(present) or "(none)"
    mapping = dict(columns or {})
    missing = [
        f"data.columns.{field} names column {column!r}" for field, column in mapping.items() if column not in present
    ]
    if missing:
        raise DataError(f"{source}: {'; '.join(missing)}, which it does not have; its columns: {listed}")
    source_of = {field: mapping.get(field, field) for field in FIELDS if mapping.get(field, field) in present}
    if "task" not in source_of and task is None:
        raise DataError(
            f"{source}: no `task` column and no default task; set the task of its "
            f"prompts (data.task, e.g. `task: math`) or map its task column (columns.task); its columns: {listed}"
        )
    return Layout(source_of, mapped=columns is not None, generate_ids="id" not in source_of, default_task=task)
