"""Load prompt records from users' files (and write them, for built-in tasks and tests).

One loader for every source, so built-in and user data go through the same checks:

* a ``.jsonl`` file: one JSON object per line; blank lines are skipped but still counted, so the line
  numbers in reports are the ones an editor shows;
* a ``.parquet`` file: one record per row (row numbers are 1-based);
* a Hugging Face ``datasets`` directory written by ``Dataset.save_to_disk`` (it holds
  ``dataset_info.json`` / ``state.json``); a ``DatasetDict`` directory is refused with its split names;
* any other directory: every top-level ``*.jsonl`` / ``*.parquet`` file in it, in sorted name order
  (shards of one data set; ids must be unique across all of them).

Every row is validated into a :class:`~mpo.data.records.PromptRecord`. A row with any problem is a bad
row; each problem is reported as a :class:`BadRow` (source, line, field, reason). With
``on_bad_row="reject"`` (the default) the whole source is scanned and then a :class:`DataError` lists
every problem; with ``"skip"`` the good records are returned together with the bad rows, and each bad
row and a summary are logged as warnings on the ``mpo.data`` logger. Rows are never dropped silently.

Lenient conversions (lossless, and what people write by hand): a number for ``answer`` or an integer for
``id`` becomes a string; ``null`` for ``images`` / ``meta`` means absent; ``meta`` may be a JSON string
holding an object (how :func:`write_prompts_parquet` stores it), a Parquet struct or a Parquet map.
Image paths are resolved against the file's directory (a ``datasets`` directory: that directory) and
returned absolute; ``~`` is not expanded and symlinks are kept, so paths stay the ones the user wrote.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, NamedTuple

from PIL import Image
from pydantic import ValidationError

from mpo.data.records import COLUMNS, PromptRecord

__all__ = [
    "BadRow",
    "DataError",
    "LoadResult",
    "load_prompts",
    "write_prompts_jsonl",
    "write_prompts_parquet",
]

log = logging.getLogger("mpo.data")

#: How many bad rows a DataError message lists before "... and N more".
MAX_LISTED = 50

_SUPPORTED = (
    "a .jsonl file, a .parquet file, a directory of .jsonl/.parquet files, "
    "or a `datasets` directory written by Dataset.save_to_disk"
)
_DATA_SUFFIXES = (".jsonl", ".parquet")
_DATASETS_MARKERS = ("dataset_info.json", "state.json")


class BadRow(NamedTuple):
    """One problem in one row, located so the user can open the file at that line."""

    source: str  # file path, or the `datasets` directory
    line: int  # 1-based physical line (JSONL) or 1-based row number (Parquet, datasets)
    field: str  # dotted field name, e.g. "question", "images[1]", "meta.x"; "<row>" for the whole row
    reason: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.field}: {self.reason}"


class DataError(ValueError):
    """Prompt data that cannot be loaded; ``bad_rows`` holds every row problem (empty for file-level errors)."""

    def __init__(self, message: str, bad_rows: Iterable[BadRow] = ()) -> None:
        super().__init__(message)
        self.bad_rows: list[BadRow] = list(bad_rows)


@dataclass
class LoadResult:
    """The good records of one source and every problem found in it."""

    records: list[PromptRecord]
    bad_rows: list[BadRow]
    source: str
    rows: int = 0  # rows read (blank JSONL lines are not rows)
    skipped: int = 0  # rows left out because they had at least one problem


# --------------------------------------------------------------------------------------------- reading


class _Unparsable(NamedTuple):
    """A row that is not even a value (bad JSON, bad UTF-8); reported on the field ``<row>``."""

    reason: str


_Row = tuple[int, Any]  # (line or row number, raw value)


@dataclass
class _Part:
    """One file (or `datasets` directory) to read: where reports point and what relative paths mean."""

    source: str
    base: Path  # directory that relative image paths are resolved against
    rows: Iterator[_Row]


def _absolute(path: Path) -> Path:
    """Absolute and normalised (``..`` folded) without resolving symlinks, so paths compare stably."""
    return Path(os.path.abspath(path))


def _jsonl_rows(path: Path) -> Iterator[_Row]:
    """Yield (physical line number, parsed value) for every non-blank line."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield number, _Unparsable(f"not valid UTF-8: {exc}")
                continue
            if number == 1:
                text = text.removeprefix("\ufeff")
            if not text.strip():
                continue
            try:
                yield number, json.loads(text)
            except json.JSONDecodeError as exc:
                yield number, _Unparsable(f"invalid JSON: {exc.msg} (column {exc.colno})")  # line is ours


def _parquet_rows(path: Path) -> Iterator[_Row]:
    """Yield (row number, row dict) in batches, so a large file is not materialised at once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    number = 0
    try:
        parquet = pq.ParquetFile(path)
        for batch in parquet.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                number += 1
                yield number, row
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: cannot read Parquet (after row {number}): {exc}") from exc


def _dataset_rows(path: Path) -> Iterator[_Row]:
    """Yield (row number, row dict) from a `Dataset.save_to_disk` directory."""
    import datasets  # heavy import; only for this format

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises many kinds (FileNotFoundError, ValueError, Arrow errors)
        raise DataError(f"{path}: cannot load `datasets` directory: {exc}") from exc
    if isinstance(loaded, datasets.DatasetDict):
        raise DataError(_dataset_dict_message(path, list(loaded)))
    yield from enumerate(loaded, start=1)


def _dataset_dict_message(path: Path, splits: list[str]) -> str:
    example = path / splits[0] if splits else path / "train"
    return (
        f"{path}: is a DatasetDict with splits {', '.join(splits) or '(none)'}; "
        f"pass one split's directory, e.g. {example}"
    )


def _file_part(path: Path) -> _Part:
    suffix = path.suffix.lower()
    base = _absolute(path).parent
    if suffix == ".jsonl":
        return _Part(str(path), base, _jsonl_rows(path))
    if suffix == ".parquet":
        return _Part(str(path), base, _parquet_rows(path))
    raise DataError(f"{path}: unsupported file type {path.suffix or '(no extension)'!r}; expected {_SUPPORTED}")


def _parts(path: Path) -> list[_Part]:
    """Decide the format from the path alone (no sniffing), so the choice is predictable."""
    if not path.exists():
        raise DataError(f"{path}: no such file or directory; expected {_SUPPORTED}")
    if not path.is_dir():
        return [_file_part(path)]
    if (path / "dataset_dict.json").is_file():
        try:
            splits = list(json.loads((path / "dataset_dict.json").read_text()).get("splits", []))
        except (OSError, ValueError, AttributeError):
            splits = []
        raise DataError(_dataset_dict_message(path, splits))
    if any((path / marker).is_file() for marker in _DATASETS_MARKERS):
        return [_Part(str(path), _absolute(path), _dataset_rows(path))]
    files = sorted(
        child
        for child in path.iterdir()
        if child.is_file() and not child.name.startswith(".") and child.suffix.lower() in _DATA_SUFFIXES
    )
    if not files:
        raise DataError(f"{path}: directory holds no .jsonl or .parquet files and is not a `datasets` directory")
    return [_file_part(child) for child in files]


# ------------------------------------------------------------------------------------------ validation


def _kind(value: Any) -> str:
    """Name a value's type in JSON terms, which is what users wrote."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float | Decimal):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _dotted(loc: tuple[int | str, ...]) -> str:
    """Pydantic's error location as the user's field name: ('images', 1) -> 'images[1]'."""
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += f".{part}" if name else str(part)
    return name or "<row>"


def _reason(error: Any) -> str:
    kind, message = error["type"], error["msg"]
    if kind == "missing":
        return "missing required field"
    if kind == "extra_forbidden":
        return f"unknown column; allowed columns: {', '.join(COLUMNS)}"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "value_error":
        return message.removeprefix("Value error, ")
    return f"{message} (got {_kind(error.get('input'))})"


def _field_order(bad: BadRow) -> int:
    """Sort one row's problems in column order, so reports read like the row."""
    top = bad.field.split("[", 1)[0].split(".", 1)[0]
    if top == "<row>":
        return -1
    return COLUMNS.index(top) if top in COLUMNS else len(COLUMNS)


class _RowChecker:
    """Validates rows one at a time; holds what spans rows (seen ids, checked images)."""

    def __init__(self, known_tasks: Collection[str] | None, check_images: bool) -> None:
        self.known_tasks = None if known_tasks is None else frozenset(known_tasks)
        self.check_images = check_images
        self._first_seen: dict[str, str] = {}  # id -> "source:line" of its first occurrence
        self._image_problems: dict[Path, str | None] = {}

    def check(self, part: _Part, line: int, raw: Any) -> tuple[PromptRecord | None, list[BadRow]]:
        problems: list[BadRow] = []

        def bad(field_name: str, reason: str) -> None:
            problems.append(BadRow(part.source, line, field_name, reason))

        if isinstance(raw, _Unparsable):
            bad("<row>", raw.reason)
            return None, problems
        if not isinstance(raw, dict):
            bad("<row>", f"expected an object with columns {', '.join(COLUMNS)}; got {_kind(raw)}")
            return None, problems

        data = dict(raw)
        for optional in ("images", "meta"):
            if optional in data and data[optional] is None:
                del data[optional]
        if _is_integer(data.get("id")):
            data["id"] = str(data["id"])
        answer = data.get("answer")
        if _is_number(answer) and math.isfinite(answer):
            data["answer"] = str(answer)  # users write "answer": 42; a non-finite number stays a type error
        if "meta" in data:
            data["meta"] = self._meta(data["meta"], bad)
        data["images"] = self._images(data.get("images", []), part.base, bad)

        record: PromptRecord | None = None
        try:
            record = PromptRecord.model_validate(data)
        except ValidationError as exc:
            for error in exc.errors():
                bad(_dotted(error["loc"]), _reason(error))

        task = data.get("task")
        if self.known_tasks is not None and isinstance(task, str) and task.strip() and task not in self.known_tasks:
            bad("task", f"unknown task {task!r}; known tasks: {', '.join(sorted(self.known_tasks)) or '(none)'}")

        row_id = data.get("id")
        if isinstance(row_id, str) and row_id:
            first = self._first_seen.setdefault(row_id, f"{part.source}:{line}")
            if first != f"{part.source}:{line}":
                bad("id", f"duplicate id {row_id!r}; first seen at {first}")

        problems.sort(key=_field_order)
        return (None if problems else record), problems

    @staticmethod
    def _meta(meta: Any, bad: Any) -> Any:
        """Parquet stores meta as a JSON string (our writer), a struct (dict) or a map (list of pairs)."""
        if isinstance(meta, str):
            try:
                decoded = json.loads(meta)
            except json.JSONDecodeError as exc:
                bad("meta", f"string is not valid JSON: {exc}")
                return {}
            if not isinstance(decoded, dict):
                bad("meta", f"JSON string must hold an object; got {_kind(decoded)}")
                return {}
            return decoded
        if isinstance(meta, list) and all(isinstance(item, tuple) and len(item) == 2 for item in meta):
            return dict(meta)  # pyarrow map column; JSON never yields tuples
        return meta  # a dict, or a wrong type that pydantic reports

    def _images(self, images: Any, base: Path, bad: Any) -> list[Path]:
        """Check the paths ourselves (pydantic's Path would accept '' as '.'), resolve them, check files."""
        if not isinstance(images, list):
            bad("images", f"expected a list of image paths; got {_kind(images)}")
            return []
        resolved: list[Path] = []
        for index, item in enumerate(images):
            name = f"images[{index}]"
            if not isinstance(item, str):
                bad(name, f"expected an image path string; got {_kind(item)}")
                continue
            if not item.strip():
                bad(name, "empty image path")
                continue
            path = _absolute(base / item)  # an absolute item replaces base
            resolved.append(path)
            if self.check_images and (problem := self._image_problem(path)):
                bad(name, problem)
        return resolved

    def _image_problem(self, path: Path) -> str | None:
        """Why an image cannot be used, or None; cached because many rows share images."""
        if path not in self._image_problems:
            problem: str | None = None
            if not path.exists():
                problem = f"image file not found: {path}"
            elif not path.is_file():
                problem = f"image path is not a file: {path}"
            else:
                try:
                    with Image.open(path) as image:
                        image.verify()
                except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
                    problem = f"unreadable image {path}: {type(exc).__name__}: {exc}"
            self._image_problems[path] = problem
        return self._image_problems[path]


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


# -------------------------------------------------------------------------------------------- loading


def load_prompts(
    path: str | os.PathLike[str],
    *,
    on_bad_row: Literal["reject", "skip"] = "reject",
    known_tasks: Collection[str] | None = None,
    check_images: bool = True,
) -> LoadResult:
    """Load and validate prompt records from ``path`` (see the module docstring for formats and rules).

    ``on_bad_row="reject"`` raises :class:`DataError` listing every problem after the whole source is
    read; ``"skip"`` returns the good records, lists the problems in ``bad_rows`` and logs each one plus
    a summary. ``known_tasks`` (when given) makes any other task a bad row. ``check_images=False`` only
    resolves image paths, without opening the files. File-level problems (missing path, unsupported
    format, unreadable Parquet) raise :class:`DataError` in both modes.
    """
    if on_bad_row not in ("reject", "skip"):
        raise ValueError(f"on_bad_row must be 'reject' or 'skip', not {on_bad_row!r}")
    source = Path(path)
    checker = _RowChecker(known_tasks, check_images)
    records: list[PromptRecord] = []
    bad_rows: list[BadRow] = []
    rows = skipped = 0
    for part in _parts(source):
        for line, raw in part.rows:
            rows += 1
            record, problems = checker.check(part, line, raw)
            if problems:
                skipped += 1
                bad_rows.extend(problems)
            else:
                assert record is not None
                records.append(record)

    result = LoadResult(records=records, bad_rows=bad_rows, source=str(source), rows=rows, skipped=skipped)
    if bad_rows and on_bad_row == "reject":
        listed = "\n".join(f"  {bad}" for bad in bad_rows[:MAX_LISTED])
        more = f"\n  ... and {len(bad_rows) - MAX_LISTED} more" if len(bad_rows) > MAX_LISTED else ""
        raise DataError(
            f"{source}: {skipped} of {rows} rows are bad ({len(bad_rows)} problems); "
            f"fix them or load with on_bad_row='skip':\n{listed}{more}",
            bad_rows,
        )
    for bad in bad_rows:
        log.warning("bad prompt row: %s", bad)
    if skipped:
        log.warning("skipped %d of %d rows in %s (%d problems)", skipped, rows, source, len(bad_rows))
    if rows == 0:
        log.warning("%s: holds no rows", source)
    return result


# -------------------------------------------------------------------------------------------- writing


def _stored_image(image: Path, folder: Path) -> str:
    """Relative (POSIX) when inside the file's folder, so the data set can be moved; else absolute."""
    absolute = _absolute(image)  # a relative path in a record means relative to the working directory
    try:
        return absolute.relative_to(folder).as_posix()
    except ValueError:
        return str(absolute)


def _stored_row(record: PromptRecord, folder: Path) -> dict[str, Any]:
    return {
        "id": record.id,
        "question": record.question,
        "images": [_stored_image(image, folder) for image in record.images],
        "answer": record.answer,
        "choices": None if record.choices is None else list(record.choices),
        "task": record.task,
        "meta": record.meta,
    }


def _replace_atomically(path: Path, write: Any) -> None:
    """Write to a sibling temp file, then rename: a crash never leaves a half-written data set."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_prompts_jsonl(records: Iterable[PromptRecord], path: str | os.PathLike[str]) -> None:
    """Write records as JSONL in :data:`COLUMNS` order; ``load_prompts`` reads them back equal."""
    target = Path(path)
    folder = _absolute(target).parent

    def write(temporary: Path) -> None:
        with temporary.open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(_stored_row(record, folder), ensure_ascii=False) + "\n")

    _replace_atomically(target, write)


def write_prompts_parquet(records: Iterable[PromptRecord], path: str | os.PathLike[str]) -> None:
    """Write records as Parquet; ``meta`` is a JSON string column because a struct cannot hold free-form dicts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = Path(path)
    folder = _absolute(target).parent
    schema = pa.schema(
        [
            ("id", pa.string()),
            ("question", pa.string()),
            ("images", pa.list_(pa.string())),
            ("answer", pa.string()),
            ("choices", pa.list_(pa.string())),
            ("task", pa.string()),
            ("meta", pa.string()),
        ]
    )
    rows = []
    for record in records:
        row = _stored_row(record, folder)
        row["meta"] = json.dumps(row["meta"], ensure_ascii=False)
        rows.append(row)
    table = pa.Table.from_pylist(rows, schema=schema)
    _replace_atomically(target, lambda temporary: pq.write_table(table, temporary))
