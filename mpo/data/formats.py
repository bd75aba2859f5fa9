"""Where rows come from: every supported source as numbered raw rows plus the columns it has.

The format is decided from the path alone (no sniffing), so the choice is predictable:

* ``.jsonl``: read here, one JSON object per line; blank lines are skipped but still counted, so the line
  numbers in reports are the ones an editor shows;
* ``.parquet``: read with pyarrow in batches (1-based row numbers);
* ``.csv``, ``.json`` (an array of objects, or JSON Lines), ``.arrow``: read by ``datasets.load_dataset``
  in streaming mode, so no Arrow copy of the file lands in the Hugging Face cache (1-based row numbers, a
  CSV's header not counted). CSV cells are read as text: ids keep leading zeros and answers stay as
  written; only an empty cell is null;
* a directory written by ``Dataset.save_to_disk`` (it holds ``dataset_info.json`` / ``state.json``); a
  ``DatasetDict`` directory is refused with its split names;
* any other directory: every top-level ``*.jsonl`` / ``*.parquet`` file in it, in sorted name order
  (shards of one data set).

Rows are the stored values, never decoded: a ``datasets`` ``Image`` column arrives as its
``{"bytes", "path"}`` storage, so image files are written byte for byte as the source holds them.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from mpo.data.errors import DataError

SUPPORTED = (
    "a .jsonl, .json, .csv, .parquet or .arrow file, a directory of .jsonl/.parquet files, "
    "or a `datasets` directory written by Dataset.save_to_disk"
)
_SHARD_SUFFIXES = (".jsonl", ".parquet")
_DATASETS_MARKERS = ("dataset_info.json", "state.json")
#: Suffix -> `datasets.load_dataset` builder, for the formats we leave to `datasets`.
_BUILDERS = {".csv": "csv", ".json": "json", ".arrow": "arrow"}
_BATCH = 256  # rows per Arrow batch: bounds the memory of image-heavy files


class Unparsable(NamedTuple):
    """A row that is not even a value (bad JSON, bad UTF-8); reported on the field ``<row>``."""

    reason: str


Row = tuple[int, Any]  # (line or row number, raw value)


@dataclass
class Part:
    """One file (or `datasets` directory) to read: where reports point and what relative paths mean."""

    source: str
    base: Path  # directory that relative image paths are resolved against
    columns: list[str]  # every column the source has (JSONL: every key of any row, in order of appearance)
    rows: Iterable[Row]


def absolute(path: Path) -> Path:
    """Absolute and normalised (``..`` folded) without resolving symlinks, so paths compare stably."""
    return Path(os.path.abspath(path))


def _union(columns: list[str], names: Iterable[str]) -> None:
    for name in names:
        if name not in columns:
            columns.append(name)


def _jsonl_part(path: Path) -> Part:
    """Read every line up front: the columns of a JSONL file are only known once all rows are seen."""
    rows: list[Row] = []
    columns: list[str] = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                rows.append((number, Unparsable(f"not valid UTF-8: {exc}")))
                continue
            if number == 1:
                text = text.removeprefix("\ufeff")
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except json.JSONDecodeError as exc:
                rows.append((number, Unparsable(f"invalid JSON: {exc.msg} (column {exc.colno})")))  # line is ours
                continue
            if isinstance(value, dict):
                _union(columns, value)
            rows.append((number, value))
    return Part(str(path), absolute(path).parent, columns, rows)


def _numbered(path: Path, kind: str, batches: Iterable[Any]) -> Iterator[Row]:
    """Rows of Arrow batches (anything with ``to_pylist``), numbered from 1; a read error is a DataError."""
    number = 0
    try:
        for batch in batches:
            for row in batch.to_pylist():
                number += 1
                yield number, row
    except Exception as exc:  # pyarrow, pandas and datasets raise many kinds for a malformed file
        raise DataError(f"{path}: cannot read {kind} (after row {number}): {exc}") from exc


def _parquet_part(path: Path) -> Part:
    """The schema up front, the rows in batches, so a large file is not materialised at once."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: cannot read Parquet (after row 0): {exc}") from exc
    rows = _numbered(path, "Parquet", parquet.iter_batches(batch_size=_BATCH))
    return Part(str(path), absolute(path).parent, list(parquet.schema_arrow.names), rows)


def _csv_options(path: Path) -> dict[str, Any]:
    """Every column as text (CSV has no types; inference would turn id 007 into 7), and only an empty cell
    is null ("NA" or "None" is an answer like any other)."""
    import datasets

    with path.open(newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle), [])
    features = datasets.Features({name: datasets.Value("string") for name in header})
    return {"features": features, "keep_default_na": False, "na_values": [""]}


def _builder_part(path: Path, builder: str) -> Part:
    """A file `datasets.load_dataset` reads, streamed (no cache files) as stored Arrow rows."""
    import datasets

    kind = builder.upper()
    try:
        options = _csv_options(path) if builder == "csv" else {}
        stream = datasets.load_dataset(
            builder, data_files=str(absolute(path)), split="train", streaming=True, **options
        )
    except Exception as exc:  # unreadable header, unknown options: datasets raises many kinds
        raise DataError(f"{path}: cannot read {kind} (after row 0): {exc}") from exc
    rows = _numbered(path, kind, stream.with_format("arrow").iter(batch_size=_BATCH))
    if stream.features is not None:  # Arrow's schema, our CSV text columns: known up front, rows streamed
        return Part(str(path), absolute(path).parent, list(stream.features), rows)
    read = list(rows)  # JSON: the columns are known once every row is read
    columns: list[str] = []
    for _, row in read:
        _union(columns, row)
    return Part(str(path), absolute(path).parent, columns, read)


def _dataset_part(path: Path) -> Part:
    """A `Dataset.save_to_disk` directory, iterated in Arrow format (images stay bytes)."""
    import datasets  # heavy import; only for this format

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises many kinds (FileNotFoundError, ValueError, Arrow errors)
        raise DataError(f"{path}: cannot load `datasets` directory: {exc}") from exc
    if isinstance(loaded, datasets.DatasetDict):
        raise DataError(_dataset_dict_message(path, list(loaded)))
    rows = _numbered(path, "`datasets` directory", loaded.with_format("arrow").iter(batch_size=_BATCH))
    return Part(str(path), absolute(path), list(loaded.column_names), rows)


def _dataset_dict_message(path: Path, splits: list[str]) -> str:
    example = path / splits[0] if splits else path / "train"
    return (
        f"{path}: is a DatasetDict with splits {', '.join(splits) or '(none)'}; "
        f"pass one split's directory, e.g. {example}"
    )


def _file_part(path: Path) -> Part:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _jsonl_part(path)
    if suffix == ".parquet":
        return _parquet_part(path)
    if suffix in _BUILDERS:
        return _builder_part(path, _BUILDERS[suffix])
    raise DataError(f"{path}: unsupported file type {path.suffix or '(no extension)'!r}; expected {SUPPORTED}")


def parts(path: Path) -> list[Part]:
    """The parts a path names (one, or a directory's shards), each with its columns known."""
    if not path.exists():
        raise DataError(f"{path}: no such file or directory; expected {SUPPORTED}")
    if not path.is_dir():
        return [_file_part(path)]
    if (path / "dataset_dict.json").is_file():
        try:
            splits = list(json.loads((path / "dataset_dict.json").read_text()).get("splits", []))
        except (OSError, ValueError, AttributeError):
            splits = []
        raise DataError(_dataset_dict_message(path, splits))
    if any((path / marker).is_file() for marker in _DATASETS_MARKERS):
        return [_dataset_part(path)]
    files = sorted(
        child
        for child in path.iterdir()
        if child.is_file() and not child.name.startswith(".") and child.suffix.lower() in _SHARD_SUFFIXES
    )
    if not files:
        raise DataError(f"{path}: directory holds no .jsonl or .parquet files and is not a `datasets` directory")
    return [_file_part(child) for child in files]
