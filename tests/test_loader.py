"""Prompt loader: real JSONL / Parquet / `datasets` files, real PNGs, every kind of bad row located."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mpo.data.loader import (
    MAX_LISTED,
    BadRow,
    DataError,
    load_prompts,
    write_prompts_jsonl,
    write_prompts_parquet,
)
from mpo.data.records import PromptRecord


def png(path: Path, colour: str = "red") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 3), colour).save(path, format="PNG")
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def row(id_: str, **fields: object) -> str:
    """A valid JSONL line, with fields overridden (None deletes a field)."""
    data: dict[str, object] = {"id": id_, "question": f"What is {id_}?", "task": "math"}
    data.update(fields)
    return json.dumps({key: value for key, value in data.items() if value is not None})


def where(bad_rows: list[BadRow]) -> list[tuple[int, str]]:
    return [(bad.line, bad.field) for bad in bad_rows]


# ---------------------------------------------------------------------------------------- good data


def test_good_jsonl_with_images_answers_and_choices(tmp_path: Path) -> None:
    inside = png(tmp_path / "img" / "a.png")
    outside = png(tmp_path / "elsewhere" / "b.png", "blue")
    data = tmp_path / "data"
    data.mkdir()
    (data / "img").mkdir()
    local = png(data / "img" / "a.png")
    path = write_lines(
        data / "prompts.jsonl",
        [
            row("q1", images=["img/a.png", str(outside)], answer=42, choices=["1", "42"], meta={"k": [1, 2]}),
            "",
            row("q2", answer=None, images=None),  # open-ended, no images, null images = absent
            row("q3", answer="x", images=["../img/a.png"]),
        ],
    )

    result = load_prompts(path)

    assert result.bad_rows == [] and result.rows == 3 and result.skipped == 0
    assert result.source == str(path)
    assert result.records == [
        PromptRecord(
            id="q1",
            question="What is q1?",
            images=[local, outside],
            answer="42",  # a number is accepted and becomes a string
            choices=["1", "42"],
            task="math",
            meta={"k": [1, 2]},
        ),
        PromptRecord(id="q2", question="What is q2?", task="math"),
        PromptRecord(id="q3", question="What is q3?", answer="x", images=[inside], task="math"),
    ]
    assert all(image.is_absolute() for record in result.records for image in record.images)


@pytest.mark.parametrize("meta", ["absent", "json", "struct"])
def test_good_parquet(tmp_path: Path, meta: str) -> None:
    png(tmp_path / "pics" / "a.png")
    columns: dict[str, pa.Array] = {
        "id": pa.array(["p1", "p2"]),
        "question": pa.array(["Q1", "Q2"]),
        "images": pa.array([["pics/a.png"], []], type=pa.list_(pa.string())),
        "answer": pa.array(["B", None]),
        "choices": pa.array([["A", "B"], None], type=pa.list_(pa.string())),
        "task": pa.array(["mcq", "chat"]),
    }
    if meta == "json":
        columns["meta"] = pa.array(['{"level": 2}', None])
    elif meta == "struct":
        columns["meta"] = pa.array([{"level": 2}, {"level": None}])
    path = tmp_path / "prompts.parquet"
    pq.write_table(pa.table(columns), path)

    result = load_prompts(path)

    first, second = result.records
    assert first == PromptRecord(
        id="p1",
        question="Q1",
        images=[tmp_path / "pics" / "a.png"],
        answer="B",
        choices=["A", "B"],
        task="mcq",
        meta={} if meta == "absent" else {"level": 2},
    )
    assert second.answer is None and second.choices is None and second.images == []
    assert second.meta == ({"level": None} if meta == "struct" else {})


def test_parquet_map_meta_and_numeric_answer(tmp_path: Path) -> None:
    path = tmp_path / "m.parquet"
    table = pa.table(
        {
            "id": pa.array([1, 2]),  # integer ids become strings
            "question": ["Q1", "Q2"],
            "answer": pa.array([7, None], type=pa.int64()),
            "task": ["math", "math"],
            "meta": pa.array([[("a", "x")], []], type=pa.map_(pa.string(), pa.string())),
        }
    )
    pq.write_table(table, path)
    records = load_prompts(path).records
    assert [(r.id, r.answer, r.meta) for r in records] == [("1", "7", {"a": "x"}), ("2", None, {})]


def test_good_datasets_dir(tmp_path: Path) -> None:
    directory = tmp_path / "ds"
    datasets.Dataset.from_list(
        [
            {"id": "d1", "question": "Q1", "images": ["images/a.png"], "answer": "3", "choices": None, "task": "math"},
            {"id": "d2", "question": "Q2", "images": [], "answer": None, "choices": ["x", "y"], "task": "mcq"},
        ]
    ).save_to_disk(str(directory))
    png(directory / "images" / "a.png")  # relative paths in a datasets dir are relative to the dir

    result = load_prompts(directory)

    assert result.source == str(directory) and result.bad_rows == []
    assert result.records == [
        PromptRecord(id="d1", question="Q1", images=[directory / "images" / "a.png"], answer="3", task="math"),
        PromptRecord(id="d2", question="Q2", choices=["x", "y"], task="mcq"),
    ]


def test_directory_of_files_loads_sorted_and_checks_ids_across_files(tmp_path: Path, caplog) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    write_lines(shards / "b.jsonl", [row("b1"), row("a1")])
    write_prompts_parquet([PromptRecord(id="a1", question="Q", task="math")], shards / "a.parquet")
    (shards / "notes.txt").write_text("ignored: not a data file")

    with pytest.raises(DataError) as caught:
        load_prompts(shards)
    assert caught.value.bad_rows == [
        BadRow(str(shards / "b.jsonl"), 2, "id", f"duplicate id 'a1'; first seen at {shards / 'a.parquet'}:1")
    ]
    with caplog.at_level(logging.WARNING, logger="mpo.data"):
        result = load_prompts(shards, on_bad_row="skip")
    assert [r.id for r in result.records] == ["a1", "b1"]
    assert "skipped 1 of 3 rows" in caplog.text


def test_check_images_false_only_resolves_paths(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "p.jsonl", [row("q", images=["missing.png"])])
    assert load_prompts(path, check_images=False).records[0].images == [tmp_path / "missing.png"]
    with pytest.raises(DataError, match="image file not found"):
        load_prompts(path)


def test_known_tasks_accepts_listed_tasks(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "p.jsonl", [row("q", task="math")])
    assert len(load_prompts(path, known_tasks={"math", "mcq"}).records) == 1


# ---------------------------------------------------------------------------------------- round trip


def sample_records(tmp_path: Path) -> list[PromptRecord]:
    inside = png(tmp_path / "out" / "img" / "a.png")
    outside = png(tmp_path / "shared" / "b.png", "green")
    return [
        PromptRecord(
            id="r1",
            question="Which?\nPick one — ünïcode.",
            images=[inside, outside],
            answer="A",
            choices=["cat", "dog"],
            task="mcq",
            meta={"solution": {"steps": [1, 2.5, "three"]}, "flag": True, "none": None},
        ),
        PromptRecord(id="r2", question="Open question", task="chat"),
        PromptRecord(id="r3", question="1+1?", answer="2", task="math", meta={"k": "v"}),
    ]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_round_trip(tmp_path: Path, fmt: str) -> None:
    records = sample_records(tmp_path)
    path = tmp_path / "out" / f"prompts.{fmt}"
    (write_prompts_jsonl if fmt == "jsonl" else write_prompts_parquet)(records, path)

    assert load_prompts(path).records == records
    stored = (
        [json.loads(line) for line in path.read_text().splitlines()]
        if fmt == "jsonl"
        else pq.read_table(path).to_pylist()
    )
    # inside the file's folder -> relative, so the folder can be moved; outside -> absolute
    assert stored[0]["images"] == ["img/a.png", str(tmp_path / "shared" / "b.png")]
    assert not list(path.parent.glob(".*.tmp"))


def test_written_folder_can_be_moved(tmp_path: Path) -> None:
    image = png(tmp_path / "before" / "a.png")
    write_prompts_jsonl([PromptRecord(id="m", question="Q", images=[image], task="t")], tmp_path / "before" / "p.jsonl")
    (tmp_path / "before").rename(tmp_path / "after")
    assert load_prompts(tmp_path / "after" / "p.jsonl").records[0].images == [tmp_path / "after" / "a.png"]


# ----------------------------------------------------------------------------------------- bad rows


@pytest.fixture
def bad_jsonl(tmp_path: Path) -> Path:
    """One of every kind of bad row, with blank lines in between to prove physical line numbers."""
    png(tmp_path / "ok.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not image data")
    return write_lines(
        tmp_path / "bad.jsonl",
        [
            row("a", images=["ok.png"]),  # 1 good
            "",  # 2 blank
            '{"id": "x", "question": ',  # 3 invalid JSON
            "[1, 2]",  # 4 not an object
            row("b", question=None),  # 5 missing question
            "   ",  # 6 blank (whitespace only)
            row("c", question="   "),  # 7 blank question
            row("d", images="ok.png"),  # 8 images not a list
            row("e", choices="A,B"),  # 9 choices not a list
            row("f", images=["ok.png", "missing.png"]),  # 10 missing image file
            row("g", images=["corrupt.png"]),  # 11 corrupt image bytes
            row("h", task="poetry"),  # 12 unknown task
            row("a"),  # 13 duplicate id
            row("i", difficulty="hard"),  # 14 unknown column
            row("j", choices=["A", 2]),  # 15 a choice that is not a string
            row("k", images=["ok.png", 3]),  # 16 an image entry that is not a string
            row("l", answer=["4"]),  # 17 answer of a wrong type
            "",  # 18 blank
            row("z", answer=7),  # 19 good
        ],
    )


EXPECTED = [
    (3, "<row>", "invalid JSON"),
    (4, "<row>", "expected an object"),
    (5, "question", "missing required field"),
    (7, "question", "must not be blank"),
    (8, "images", "expected a list of image paths; got string"),
    (9, "choices", "Input should be a valid list (got string)"),
    (10, "images[1]", "image file not found"),
    (11, "images[0]", "unreadable image"),
    (12, "task", "unknown task 'poetry'; known tasks: math"),
    (13, "id", "duplicate id 'a'; first seen at"),
    (14, "difficulty", "unknown column"),
    (15, "choices[1]", "Input should be a valid string (got number)"),
    (16, "images[1]", "expected an image path string; got number"),
    (17, "answer", "Input should be a valid string (got list)"),
]


def assert_expected(bad_rows: list[BadRow], path: Path) -> None:
    assert where(bad_rows) == [(line, field) for line, field, _ in EXPECTED]
    for bad, (_, _, reason) in zip(bad_rows, EXPECTED, strict=True):
        assert bad.source == str(path)
        assert reason in bad.reason, bad


def test_reject_lists_every_bad_row_with_file_and_line(bad_jsonl: Path) -> None:
    with pytest.raises(DataError) as caught:
        load_prompts(bad_jsonl, known_tasks=["math"])

    error = caught.value
    assert_expected(error.bad_rows, bad_jsonl)
    message = str(error)
    assert f"{bad_jsonl}: 14 of 16 rows are bad" in message
    for bad in error.bad_rows:
        assert str(bad) in message
        assert str(bad).startswith(f"{bad_jsonl}:{bad.line}: {bad.field}: ")
    assert "first seen at " + f"{bad_jsonl}:1" in message


def test_skip_returns_good_rows_and_logs_each_bad_row(bad_jsonl: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="mpo.data"):
        result = load_prompts(bad_jsonl, on_bad_row="skip", known_tasks=["math"])

    assert [record.id for record in result.records] == ["a", "z"]
    assert result.records[1].answer == "7"
    assert (result.rows, result.skipped) == (16, 14)
    assert_expected(result.bad_rows, bad_jsonl)
    warnings = [r.getMessage() for r in caplog.records if r.name == "mpo.data" and r.levelno == logging.WARNING]
    assert warnings[:-1] == [f"bad prompt row: {bad}" for bad in result.bad_rows]
    assert warnings[-1] == f"skipped 14 of 16 rows in {bad_jsonl} (14 problems)"


def test_all_problems_of_one_row_are_reported(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "p.jsonl", [json.dumps({"id": "", "images": [""], "task": 3, "extra": 1})])
    with pytest.raises(DataError) as caught:
        load_prompts(path)
    assert where(caught.value.bad_rows) == [(1, "id"), (1, "question"), (1, "images[0]"), (1, "task"), (1, "extra")]


def test_invalid_utf8_line_is_a_bad_row(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_bytes(row("a").encode() + b"\n\xff\xfe\n" + row("b").encode() + b"\n")
    result = load_prompts(path, on_bad_row="skip")
    assert [r.id for r in result.records] == ["a", "b"]
    assert where(result.bad_rows) == [(2, "<row>")] and "UTF-8" in result.bad_rows[0].reason


def test_parquet_bad_rows_report_row_numbers(tmp_path: Path) -> None:
    png(tmp_path / "ok.png")
    path = tmp_path / "bad.parquet"
    table = pa.table(
        {
            "id": ["p1", "p2", "p3", "p4"],
            "question": ["Q1", "", "Q3", "Q4"],
            "images": [["ok.png"], [], ["nope.png"], []],
            "task": ["math"] * 4,
            "meta": [None, None, None, "[1]"],
        }
    )
    pq.write_table(table, path, row_group_size=2)
    with pytest.raises(DataError) as caught:
        load_prompts(path)
    assert caught.value.bad_rows == [
        BadRow(str(path), 2, "question", "must not be empty"),
        BadRow(str(path), 3, "images[0]", f"image file not found: {tmp_path / 'nope.png'}"),
        BadRow(str(path), 4, "meta", "JSON string must hold an object; got list"),
    ]
    assert f"{path}:3: images[0]: image file not found" in str(caught.value)


def test_parquet_unknown_column_reported_on_every_row(tmp_path: Path) -> None:
    path = tmp_path / "extra.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "question": ["Q", "Q"], "task": ["t", "t"], "lang": ["en", "de"]}), path)
    result = load_prompts(path, on_bad_row="skip")
    assert result.records == [] and where(result.bad_rows) == [(1, "lang"), (2, "lang")]


def test_datasets_dir_bad_row_reports_row_number(tmp_path: Path) -> None:
    directory = tmp_path / "ds"
    datasets.Dataset.from_list(
        [
            {"id": "d1", "question": "Q1", "images": [], "task": "math"},
            {"id": "d2", "question": "Q2", "images": ["gone.png"], "task": "math"},
        ]
    ).save_to_disk(str(directory))
    with pytest.raises(DataError) as caught:
        load_prompts(directory)
    assert caught.value.bad_rows == [
        BadRow(str(directory), 2, "images[0]", f"image file not found: {directory / 'gone.png'}")
    ]


def test_error_message_caps_listed_rows(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "p.jsonl", [row(f"q{i}", question="") for i in range(MAX_LISTED + 7)])
    with pytest.raises(DataError) as caught:
        load_prompts(path)
    assert len(caught.value.bad_rows) == MAX_LISTED + 7
    message = str(caught.value)
    assert f"{path}:{MAX_LISTED}: question" in message
    assert f"{path}:{MAX_LISTED + 1}: question" not in message
    assert "... and 7 more" in message


# ------------------------------------------------------------------------------------- file errors


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no such file or directory") as caught:
        load_prompts(tmp_path / "nope.jsonl")
    assert str(tmp_path / "nope.jsonl") in str(caught.value) and caught.value.bad_rows == []


@pytest.mark.parametrize("name", ["prompts.txt", "prompts.xlsx", "prompts"])  # .csv / .json load: test_data_sources
def test_unsupported_extension(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("id,question\n")
    with pytest.raises(DataError) as caught:
        load_prompts(path)
    message = str(caught.value)
    assert (
        str(path) in message
        and ".jsonl" in message
        and ".parquet" in message
        and "save_to_disk" in message
        and ".csv" in message
    )


def test_empty_directory_and_dataset_dict_are_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no \.jsonl or \.parquet files"):
        load_prompts(tmp_path / "empty")
    split = datasets.Dataset.from_list([{"id": "a", "question": "Q", "task": "t"}])
    datasets.DatasetDict({"train": split}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match="DatasetDict with splits train"):
        load_prompts(tmp_path / "dd")


def test_corrupt_parquet_is_a_file_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="cannot read Parquet"):
        load_prompts(path, on_bad_row="skip")


def test_on_bad_row_must_be_known(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "p.jsonl", [row("a")])
    with pytest.raises(ValueError, match="on_bad_row"):
        load_prompts(path, on_bad_row="ignore")  # type: ignore[arg-type]
