"""Load prompt records from users' files (and write them, for built-in tasks and tests).

One loader for every source, so built-in and user data go through the same checks. Which files and
directories are read, and how, is `mpo.data.formats`; which column feeds which record field is
`mpo.data.columns` (the record format itself, or a mapping for data sets with their own column names).

Every row is validated into a :class:`~mpo.data.records.PromptRecord`. A row with any problem is a bad
row; each problem is reported as a :class:`BadRow` (source, line, SOURCE column, reason). With
``on_bad_row="reject"`` (the default) the whole source is scanned and then a :class:`DataError` lists
every problem; with ``"skip"`` the good records are returned together with the bad rows, and each bad
row and a summary are logged as warnings on the ``mpo.data`` logger. Rows are never dropped silently.

Lenient conversions (lossless, and what people write by hand): a number for ``answer`` or an integer for
``id`` becomes a string; ``null`` for ``images`` / ``meta`` means absent; ``meta`` may be a JSON string
holding an object (how :func:`write_prompts_parquet` stores it), a Parquet struct or a Parquet map.
Image paths are resolved against the file's directory (a ``datasets`` directory: that directory) and
returned absolute; ``~`` is not expanded and symlinks are kept, so paths stay the ones the user wrote.
Images held as bytes (a ``datasets`` ``Image`` column, raw bytes) are written to a content-addressed
image directory (`mpo.data.images`) and the record holds that file. A source without an id column gets
content ids (`mpo.data.ids`); rows without a task get the default task; answers go through the chosen
normaliser (`mpo.data.answer_formats`).

:func:`load_prompts` takes plain arguments; `mpo.data.sources.load_split` loads a run config's ``data``
section with it, which is what everything that runs on a config calls.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from pydantic import ValidationError

from mpo.data.answer_formats import ANSWER_FORMATS
from mpo.data.columns import FIELDS, Layout, resolve
from mpo.data.errors import BadRow, DataError
from mpo.data.formats import Part, Unparsable, absolute, parts
from mpo.data.ids import IdGenerator
from mpo.data.images import ImageStore, digest
from mpo.data.records import COLUMNS, PromptRecord
from mpo.durable import atomic_write

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


@dataclass
class LoadResult:
    """The good records of one source and every problem found in it."""

    records: list[PromptRecord]
    bad_rows: list[BadRow]
    source: str
    rows: int = 0  # rows read (blank JSONL lines are not rows)
    skipped: int = 0  # rows left out because they had at least one problem


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
        return f"unknown column; allowed columns: {', '.join(COLUMNS)} (or map the data set's columns: data.columns)"
    if kind == "string_too_short":
        return "must not be empty"
    if kind == "value_error":
        return message.removeprefix("Value error, ")
    return f"{message} (got {_kind(error.get('input'))})"


def _top(field_name: str) -> str:
    return field_name.split("[", 1)[0].split(".", 1)[0]


def _field_order(bad: BadRow) -> int:
    """Sort one row's problems in column order, so reports read like the row."""
    top = _top(bad.field)
    if top == "<row>":
        return -1
    return COLUMNS.index(top) if top in COLUMNS else len(COLUMNS)


def _in_source_terms(bad: BadRow, layout: Layout) -> BadRow:
    """A problem found on a record field, reported on the source column it was read from."""
    top = _top(bad.field)
    if top not in FIELDS:
        return bad
    return bad._replace(field=layout.column(top) + bad.field[len(top) :])


class _RowChecker:
    """Validates rows one at a time; holds what spans rows (seen ids, checked images, generated ids)."""

    def __init__(
        self,
        known_tasks: Collection[str] | None,
        check_images: bool,
        normalise: Callable[[str], str],
        store: ImageStore | None,
    ) -> None:
        self.known_tasks = None if known_tasks is None else frozenset(known_tasks)
        self.check_images = check_images
        self.normalise = normalise
        self.store = store
        self._ids = IdGenerator()
        self._first_seen: dict[str, str] = {}  # id -> "source:line" of its first occurrence
        self._image_problems: dict[Path, str | None] = {}

    def check(self, part: Part, layout: Layout, line: int, raw: Any) -> tuple[PromptRecord | None, list[BadRow]]:
        problems: list[BadRow] = []

        def bad(field_name: str, reason: str) -> None:  # field_name in record terms; renamed below
            problems.append(BadRow(part.source, line, field_name, reason))

        if isinstance(raw, Unparsable):
            bad("<row>", raw.reason)
            return None, problems
        if not isinstance(raw, dict):
            bad("<row>", f"expected an object with columns {', '.join(COLUMNS)}; got {_kind(raw)}")
            return None, problems

        data = layout.record_fields(raw)
        for optional in ("images", "meta"):
            if optional in data and data[optional] is None:
                del data[optional]
        if _is_integer(data.get("id")):
            data["id"] = str(data["id"])
        if data.get("task") is None and layout.default_task is not None:
            data["task"] = layout.default_task
        answer = data.get("answer")
        if _is_number(answer) and math.isfinite(answer):
            data["answer"] = str(answer)  # users write "answer": 42; a non-finite number stays a type error
        if "meta" in data and not layout.mapped:
            data["meta"] = self._meta(data["meta"], bad)
        data["images"], image_keys = self._images(data.get("images", []), part, layout, bad)
        if layout.generate_ids:
            data["id"] = self._ids(data.get("question"), data.get("answer"), data.get("choices"), image_keys)
        if isinstance(data.get("answer"), str):
            try:
                data["answer"] = self.normalise(data["answer"])
            except ValueError as exc:
                bad("answer", str(exc))

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
        return (None if problems else record), [_in_source_terms(problem, layout) for problem in problems]

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

    def _images(self, images: Any, part: Part, layout: Layout, bad: Any) -> tuple[list[Path], list[str]]:
        """The image files of a row, and what identifies each as written (a path, or the bytes' SHA-256).

        A path is checked here (pydantic's Path would accept '' as '.'), resolved and its file checked;
        bytes (raw, or a `datasets` Image value ``{"bytes", "path"}``) go to the image store. The record
        format wants a list; a mapped column may hold one image instead."""
        lone = not isinstance(images, list)
        if lone and not layout.mapped:
            bad("images", f"expected a list of image paths; got {_kind(images)}")
            return [], []
        resolved: list[Path] = []
        keys: list[str] = []
        for index, item in enumerate([images] if lone else images):
            name = "images" if lone else f"images[{index}]"
            if isinstance(item, dict) and set(item) <= {"bytes", "path"}:  # a `datasets` Image value
                item = item.get("bytes") if item.get("bytes") is not None else item.get("path")
                if item is None:
                    bad(name, "image has neither bytes nor a path")
                    continue
            if isinstance(item, bytes | bytearray | memoryview):
                data = bytes(item)
                keys.append(digest(data))
                store = self._store(part, layout)  # outside the try: no store is a file-level DataError
                try:
                    resolved.append(store.put(data))
                except ValueError as exc:
                    bad(name, str(exc))
                continue
            if not isinstance(item, str):
                bad(name, f"expected an image path string; got {_kind(item)} (image bytes or {{bytes, path}} also do)")
                continue
            if not item.strip():
                bad(name, "empty image path")
                continue
            keys.append(item)
            path = absolute(part.base / item)  # an absolute item replaces base
            resolved.append(path)
            if self.check_images and (problem := self._image_problem(path)):
                bad(name, problem)
        return resolved, keys

    def _store(self, part: Part, layout: Layout) -> ImageStore:
        if self.store is None:
            raise DataError(
                f"{part.source}: column {layout.column('images')!r} holds image bytes, which are written to an "
                "image directory as files, but no image directory was given (image_dir)"
            )
        return self.store

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
    columns: Mapping[str, str] | None = None,
    task: str | None = None,
    answer_format: str = "none",
    image_dir: Path | None = None,
) -> LoadResult:
    """Load and validate prompt records from ``path`` (see the module docstring for formats and rules).

    ``on_bad_row="reject"`` raises :class:`DataError` listing every problem after the whole source is
    read; ``"skip"`` returns the good records, lists the problems in ``bad_rows`` and logs each one plus
    a summary. ``known_tasks`` (when given) makes any other task a bad row. ``check_images=False`` only
    resolves image paths, without opening the files. ``columns`` maps record fields to the source's
    columns (None: the source is in the record format), ``task`` is the task of rows without one,
    ``answer_format`` names the answer normaliser, and image bytes are written under ``image_dir``.
    File-level problems (missing path, unsupported format, unreadable file, a mapped column the source
    does not have, no task, image bytes without ``image_dir``) raise :class:`DataError` in both modes.
    """
    if on_bad_row not in ("reject", "skip"):
        raise ValueError(f"on_bad_row must be 'reject' or 'skip', not {on_bad_row!r}")
    if answer_format not in ANSWER_FORMATS:
        raise ValueError(f"answer_format must be one of {', '.join(ANSWER_FORMATS)}, not {answer_format!r}")
    for field_name in columns or {}:
        if field_name not in FIELDS:
            raise ValueError(f"columns.{field_name}: not a mappable field; fields: {', '.join(FIELDS)}")
    if task is not None and known_tasks is not None and task not in known_tasks:
        known = ", ".join(sorted(known_tasks)) or "(none)"
        raise DataError(f"default task {task!r} is not a known task; known tasks: {known}")
    source = Path(path)
    store = None if image_dir is None else ImageStore(image_dir)
    checker = _RowChecker(known_tasks, check_images, ANSWER_FORMATS[answer_format], store)
    records: list[PromptRecord] = []
    bad_rows: list[BadRow] = []
    rows = skipped = 0
    for part in parts(source):
        layout = resolve(part.source, part.columns, columns, task)
        for line, raw in part.rows:
            rows += 1
            record, problems = checker.check(part, layout, line, raw)
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
            f"fix them, or skip them (data.skip_bad_rows: true; on_bad_row='skip'):\n{listed}{more}",
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
    full = absolute(image)  # a relative path in a record means relative to the working directory
    try:
        return full.relative_to(folder).as_posix()
    except ValueError:
        return str(full)


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


def write_prompts_jsonl(records: Iterable[PromptRecord], path: str | os.PathLike[str]) -> None:
    """Write records as JSONL in :data:`COLUMNS` order; ``load_prompts`` reads them back equal."""
    target = Path(path)
    folder = absolute(target).parent

    def write(temporary: Path) -> None:
        with temporary.open("w", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(_stored_row(record, folder), ensure_ascii=False) + "\n")

    atomic_write(target, write)  # a crash never leaves a half-written data set


def write_prompts_parquet(records: Iterable[PromptRecord], path: str | os.PathLike[str]) -> None:
    """Write records as Parquet; ``meta`` is a JSON string column because a struct cannot hold free-form dicts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = Path(path)
    folder = absolute(target).parent
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
    atomic_write(target, lambda temporary: pq.write_table(table, temporary))
