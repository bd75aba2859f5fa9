"""Users' data as it is: GSM8K JSONL, MathVista-shaped Parquet with an Image feature, CSV, JSON, Arrow and
`save_to_disk` directories, read through the run config's `data` section (column mapping, default task,
answer normaliser, generated ids, content-addressed images). Every data set is built here."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import Any, get_args

import datasets
import pytest
import yaml
from datasets import Features, Image, List, Value
from PIL import Image as PILImage
from pydantic import ValidationError

from mpo.config import AnswerFormat, ConfigError, DataConfig, load_config
from mpo.data.answer_formats import ANSWER_FORMATS
from mpo.data.loader import BadRow, DataError, load_prompts
from mpo.data.records import PromptRecord
from mpo.data.sources import load_split


def image_bytes(colour: str, fmt: str = "PNG", size: tuple[int, int] = (5, 4)) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def data_config(train: Path, heldout: Path | None = None, **fields: Any) -> DataConfig:
    return DataConfig.model_validate({"train": train, "heldout": heldout or train, **fields})


# ------------------------------------------------------------------------------------------------ GSM8K

GSM8K_ROWS = [
    {"question": "Natalia sold clips to 48 friends ...", "answer": "She sold 48/2 = 24 in May.\n#### 72"},
    {"question": "A store had 1,200 apples ...", "answer": "1,200 + 34 = 1,234\n#### 1,234"},
    {"question": "The temperature fell by 5 degrees ...", "answer": "0 - 5 = -5 #### -5"},
    {"question": "Natalia sold clips to 48 friends ...", "answer": "She sold 48/2 = 24 in May.\n#### 72"},  # repeat
]


@pytest.fixture
def gsm8k(tmp_path: Path) -> Path:
    """GSM8K as it ships: only question and answer, the final answer after '####'."""
    (tmp_path / "gsm8k").mkdir()
    return write_jsonl(tmp_path / "gsm8k" / "train.jsonl", GSM8K_ROWS)


def test_gsm8k_jsonl_loads_with_a_default_task_normalised_answers_and_stable_ids(gsm8k: Path, tmp_path: Path) -> None:
    config = data_config(gsm8k, task="gsm8k", answer_format="gsm8k")

    first = load_split(config, "train", image_dir=None)

    assert first.bad_rows == [] and first.rows == 4
    assert [record.answer for record in first.records] == ["72", "1234", "-5", "72"]
    assert {record.task for record in first.records} == {"gsm8k"}
    assert [record.meta for record in first.records] == [{}] * 4  # the record format: no other columns
    ids = [record.id for record in first.records]
    assert len(set(ids)) == 4 and ids[3] == f"{ids[0]}-2", "a repeat of the same content is numbered"
    assert all(len(record_id.split("-")[0]) == 16 for record_id in ids)
    assert [record.id for record in load_split(config, "train", image_dir=None).records] == ids, "same file, same ids"

    # Another machine, another folder, another name, rows reordered: every prompt keeps its id.
    elsewhere = tmp_path / "other-machine" / "copy.jsonl"
    elsewhere.parent.mkdir()
    write_jsonl(elsewhere, [GSM8K_ROWS[2], GSM8K_ROWS[0], GSM8K_ROWS[1]])
    moved = load_split(data_config(elsewhere, task="gsm8k", answer_format="gsm8k"), "train", image_dir=None)
    assert [record.id for record in moved.records] == [ids[2], ids[0], ids[1]]


def test_gsm8k_without_a_task_is_refused_with_what_to_set(gsm8k: Path) -> None:
    with pytest.raises(DataError) as caught:
        load_split(data_config(gsm8k, answer_format="gsm8k"), "train", image_dir=None)
    message = str(caught.value)
    assert message.startswith(f"{gsm8k}: no `task` column and no default task")
    assert "data.task" in message and "columns.task" in message and "its columns: question, answer" in message
    assert caught.value.bad_rows == []


@pytest.mark.parametrize(
    ("answer", "final"),
    [
        ("#### 72", "72"),
        ("so 1,000 + 234 = 1,234\n#### 1,234", "1234"),
        ("#### 1,234,567", "1234567"),
        ("owes #### -5", "-5"),
        ("#### -1,250.5", "-1250.5"),
        ("first #### 3 then corrected #### 4 ", "4"),  # the last marker counts
        ("#### 3, 4", "3, 4"),  # a comma that is not inside a number stays
    ],
)
def test_gsm8k_normaliser(answer: str, final: str) -> None:
    assert ANSWER_FORMATS["gsm8k"](answer) == final
    assert ANSWER_FORMATS["none"](answer) == answer


def test_answer_format_names_match_the_config() -> None:
    assert set(get_args(AnswerFormat)) == set(ANSWER_FORMATS)
    with pytest.raises(ValidationError, match="answer_format"):
        data_config(Path("x.jsonl"), answer_format="boxed")


def test_answers_the_normaliser_cannot_read_are_bad_rows_on_the_answer_column(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "math.jsonl",
        [
            {"problem": "1 + 1?", "solution": "1 + 1 = 2 #### 2"},
            {"problem": "2 + 2?", "solution": "The answer is 4."},
            {"problem": "3 + 3?", "solution": "6 ####   "},
            {"problem": "", "solution": 7},
        ],
    )
    config = data_config(
        path, columns={"question": "problem", "answer": "solution"}, task="math", answer_format="gsm8k"
    )

    with pytest.raises(DataError) as caught:
        load_split(config, "train", image_dir=None)
    source = str(path)
    assert [bad[:3] for bad in caught.value.bad_rows] == [
        (source, 2, "solution"),
        (source, 3, "solution"),
        (source, 4, "problem"),
        (source, 4, "solution"),
    ]
    reasons = [bad.reason for bad in caught.value.bad_rows]
    assert "no '####' in the answer" in reasons[0] and "nothing after the last '####'" in reasons[1]
    assert reasons[2] == "must not be empty" and "no '####'" in reasons[3]
    assert f"{path}:2: solution: no '####'" in str(caught.value)

    skipped = load_split(config.model_copy(update={"skip_bad_rows": True}), "train", image_dir=None)
    assert [(record.question, record.answer) for record in skipped.records] == [("1 + 1?", "2")]
    assert (skipped.rows, skipped.skipped) == (4, 3)


# -------------------------------------------------------------------------------------------- MathVista

RED, BLUE = image_bytes("red"), image_bytes("blue", "JPEG")
MATHVISTA_FEATURES = Features(
    {
        "pid": Value("string"),
        "question": Value("string"),
        "image": Value("string"),
        "decoded_image": Image(),
        "choices": List(Value("string")),
        "unit": Value("string"),
        "precision": Value("float64"),
        "answer": Value("string"),
        "question_type": Value("string"),
        "answer_type": Value("string"),
        "metadata": {"source": Value("string"), "grade": Value("string")},
        "query": Value("string"),
    }
)


def mathvista_rows(images: list[bytes]) -> dict[str, list[Any]]:
    count = len(images)
    return {
        "pid": [str(index + 1) for index in range(count)],
        "question": [f"Question {index}?" for index in range(count)],
        "image": [f"images/{index + 1}.jpg" for index in range(count)],
        "decoded_image": [{"bytes": data, "path": None} for data in images],
        "choices": [["A", "B"] if index % 2 == 0 else None for index in range(count)],
        "unit": [None] * count,
        "precision": [None if index % 2 == 0 else 1.0 for index in range(count)],
        "answer": ["B" if index % 2 == 0 else "1.5" for index in range(count)],
        "question_type": ["multi_choice" if index % 2 == 0 else "free_form" for index in range(count)],
        "answer_type": ["text" if index % 2 == 0 else "float" for index in range(count)],
        "metadata": [{"source": "FigureQA", "grade": "daily life"}] * count,
        "query": [f"Hint: answer it.\nQuestion {index}?" for index in range(count)],
    }


def write_mathvista(path: Path, images: list[bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(mathvista_rows(images), features=MATHVISTA_FEATURES).to_parquet(str(path))
    return path


MATHVISTA_DATA = {"columns": {"question": "query", "images": "decoded_image", "id": "pid"}, "task": "mathvista"}


def test_mathvista_parquet_images_land_once_in_the_image_directory_and_decode(tmp_path: Path) -> None:
    path = write_mathvista(tmp_path / "mathvista" / "testmini.parquet", [RED, BLUE, RED])
    images = tmp_path / "store" / "images"
    config = data_config(path, **MATHVISTA_DATA)

    result = load_split(config, "heldout", image_dir=images)

    first, second, third = result.records
    assert [record.id for record in result.records] == ["1", "2", "3"]
    assert first.question == "Hint: answer it.\nQuestion 0?" and first.task == "mathvista"
    assert (first.answer, first.choices, second.answer, second.choices) == ("B", ["A", "B"], "1.5", None)
    # The other columns travel in meta (MathVista's own `question` and `image` path too); no image bytes there.
    assert second.meta == {
        "question": "Question 1?",
        "image": "images/2.jpg",
        "unit": None,
        "precision": 1.0,
        "question_type": "free_form",
        "answer_type": "float",
        "metadata": {"source": "FigureQA", "grade": "daily life"},
    }
    # A single Image per row is one image; the same bytes are one file, named by their SHA-256 and format.
    assert first.images == third.images == [images / f"{hashlib.sha256(RED).hexdigest()}.png"]
    assert second.images == [images / f"{hashlib.sha256(BLUE).hexdigest()}.jpg"]
    assert sorted(file.name for file in images.iterdir()) == sorted([first.images[0].name, second.images[0].name])
    assert first.images[0].read_bytes() == RED, "written byte for byte, not re-encoded"
    with PILImage.open(second.images[0]) as decoded:
        assert decoded.format == "JPEG" and decoded.size == (5, 4)

    written = {file: file.stat().st_mtime_ns for file in images.iterdir()}
    again = load_split(config, "heldout", image_dir=images)
    assert again.records == result.records
    assert {file: file.stat().st_mtime_ns for file in images.iterdir()} == written, "existing images not rewritten"


def test_image_bytes_without_an_image_directory_name_the_source_and_column(tmp_path: Path) -> None:
    path = write_mathvista(tmp_path / "mv.parquet", [RED])
    with pytest.raises(DataError) as caught:
        load_split(data_config(path, **MATHVISTA_DATA), "train", image_dir=None)
    message = str(caught.value)
    assert message.startswith(f"{path}: column 'decoded_image' holds image bytes") and "image_dir" in message


def test_mapping_a_missing_column_is_one_file_error_naming_the_key_and_the_columns(tmp_path: Path) -> None:
    path = write_mathvista(tmp_path / "mv.parquet", [RED, BLUE])
    columns = {"question": "prompt", "images": "decoded_image", "answer": "solution"}
    with pytest.raises(DataError) as caught:
        load_split(data_config(path, columns=columns, task="mathvista"), "train", image_dir=tmp_path / "img")
    message = str(caught.value)
    assert message == (
        f"{path}: data.columns.question names column 'prompt'; data.columns.answer names column 'solution', "
        "which it does not have; its columns: pid, question, image, decoded_image, choices, unit, precision, answer, "
        "question_type, answer_type, metadata, query"
    )
    assert caught.value.bad_rows == [] and not (tmp_path / "img").exists(), "nothing read, nothing written"


def test_unknown_mapping_keys_are_config_errors_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as caught:
        data_config(tmp_path / "x.parquet", columns={"questoin": "query"})
    assert [error["loc"] for error in caught.value.errors()] == [("columns", "questoin")]
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"data": {"train": "a", "heldout": "b", "columns": {"prompt": "query"}}}))
    with pytest.raises(ConfigError, match=r"data\.columns\.prompt: Extra inputs are not permitted"):
        load_config(run)
    with pytest.raises(ValidationError, match="question and answer both name column 'text'"):
        data_config(tmp_path / "x.parquet", columns={"question": "text", "answer": "text"})
    with pytest.raises(ValueError, match=r"columns\.prompt: not a mappable field"):
        load_prompts(tmp_path / "x.jsonl", columns={"prompt": "query"})


def test_bad_rows_name_the_source_row_and_the_source_column(tmp_path: Path) -> None:
    rows = mathvista_rows([RED, b"\x89PNG\r\n\x1a\n not an image", RED, RED])
    rows["query"][2] = ""  # a blank question in MathVista's `query`
    rows["pid"][3] = "1"  # a repeated pid
    path = tmp_path / "mv.parquet"
    datasets.Dataset.from_dict(rows, features=MATHVISTA_FEATURES).to_parquet(str(path))

    with pytest.raises(DataError) as caught:
        load_split(data_config(path, **MATHVISTA_DATA), "train", image_dir=tmp_path / "images")

    source = str(path)
    assert [bad[:3] for bad in caught.value.bad_rows] == [
        (source, 2, "decoded_image"),
        (source, 3, "query"),
        (source, 4, "pid"),
    ]
    assert caught.value.bad_rows[0].reason == "unreadable image bytes: not an image format PIL knows (21 bytes)"
    assert caught.value.bad_rows[1:] == [
        BadRow(source, 3, "query", "must not be empty"),
        BadRow(source, 4, "pid", f"duplicate id '1'; first seen at {source}:1"),
    ]


# ------------------------------------------------------------------------------ CSV, JSON, Arrow, datasets


def test_csv_reads_text_as_written_with_a_lone_image_path_per_row(tmp_path: Path) -> None:
    (tmp_path / "pics").mkdir()
    PILImage.new("RGB", (3, 3), "green").save(tmp_path / "pics" / "g.png")
    path = tmp_path / "prompts.csv"
    path.write_text(
        'uid,prompt,answer,picture,level\n007,"How many sides,\nin total?",NA,pics/g.png,3\n008,What is 2 + 2?,4,,\n',
        encoding="utf-8",
    )
    config = data_config(path, columns={"id": "uid", "question": "prompt", "images": "picture"}, task="count")

    records = load_split(config, "train", image_dir=None).records

    assert records == [
        PromptRecord(
            id="007",  # text, not the number 7
            question="How many sides,\nin total?",
            images=[tmp_path / "pics" / "g.png"],  # one path, relative to the file
            answer="NA",  # an answer like any other, not a missing value
            task="count",
            meta={"level": "3"},
        ),
        PromptRecord(id="008", question="What is 2 + 2?", answer="4", task="count", meta={"level": None}),
    ]


def test_csv_bad_rows_are_numbered_without_the_header(tmp_path: Path) -> None:
    path = tmp_path / "p.csv"
    path.write_text("question,answer,task\nQ1,1,math\n,2,math\nQ3,3,\n", encoding="utf-8")
    result = load_prompts(path, on_bad_row="skip", task="math")
    assert [(bad.line, bad.field) for bad in result.bad_rows] == [(2, "question")]
    assert [record.task for record in result.records] == ["math", "math"], "a null task gets the default"


def test_a_malformed_csv_is_a_file_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.csv"
    path.write_text('question,answer\nQ1,1\n"unterminated,2\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"broken\.csv: cannot read CSV \(after row 0\): .*EOF inside string") as caught:
        load_prompts(path, task="math", on_bad_row="skip")
    assert caught.value.bad_rows == []


def test_json_array_and_arrow_files_load_through_datasets(tmp_path: Path) -> None:
    json_path = tmp_path / "p.json"
    json_path.write_text(json.dumps([{"question": "Q1", "answer": 3}, {"question": "Q2", "note": "x"}]))
    records = load_prompts(json_path, columns={}, task="math").records
    assert [(r.question, r.answer, r.meta) for r in records] == [
        ("Q1", "3", {"note": None}),
        ("Q2", None, {"note": "x"}),
    ]

    saved = tmp_path / "saved"
    datasets.Dataset.from_dict(
        {"question": ["Q"], "picture": [{"bytes": RED, "path": None}]},
        features=Features({"question": Value("string"), "picture": Image()}),
    ).save_to_disk(str(saved))
    arrow = tmp_path / "p.arrow"
    shutil.copy(next(saved.glob("*.arrow")), arrow)  # a datasets Arrow file
    (record,) = load_prompts(arrow, columns={"images": "picture"}, task="vqa", image_dir=tmp_path / "img").records
    assert record.images[0].read_bytes() == RED and record.meta == {}


def test_save_to_disk_directory_with_a_list_of_images(tmp_path: Path) -> None:
    directory = tmp_path / "ds"
    datasets.Dataset.from_dict(
        {
            "prompt": ["Compare them.", "Only one."],
            "images": [[{"bytes": RED, "path": None}, {"bytes": BLUE, "path": None}], [{"bytes": BLUE, "path": None}]],
            "ground_truth": ["left", "blue"],
        },
        features=Features({"prompt": Value("string"), "images": List(Image()), "ground_truth": Value("string")}),
    ).save_to_disk(str(directory))
    config = data_config(directory, columns={"question": "prompt", "answer": "ground_truth"}, task="vqa")

    first, second = load_split(config, "train", image_dir=tmp_path / "img").records

    assert [len(first.images), len(second.images)] == [2, 1] and first.images[1] == second.images[0]
    assert len(list((tmp_path / "img").iterdir())) == 2
    assert first.id != second.id and first.answer == "left"


def test_path_only_image_values_resolve_against_the_file(tmp_path: Path) -> None:
    PILImage.new("RGB", (2, 2), "white").save(tmp_path / "w.png")
    path = tmp_path / "p.jsonl"
    write_jsonl(path, [{"question": "Q", "img": {"bytes": None, "path": "w.png"}}, {"question": "R", "img": {}}])
    result = load_prompts(path, columns={"images": "img"}, task="t", on_bad_row="skip")
    assert result.records[0].images == [tmp_path / "w.png"]
    assert [(bad.line, bad.field, bad.reason) for bad in result.bad_rows] == [
        (2, "img", "image has neither bytes nor a path")
    ]


def test_default_task_must_be_known_and_a_task_column_wins(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "p.jsonl", [{"id": "a", "question": "Q", "task": "shapes"}, {"id": "b", "question": "R"}]
    )
    with pytest.raises(DataError, match="default task 'poetry' is not a known task; known tasks: arith, shapes"):
        load_prompts(path, task="poetry", known_tasks=["arith", "shapes"])
    records = load_prompts(path, task="arith", known_tasks=["arith", "shapes"]).records
    assert [record.task for record in records] == ["shapes", "arith"]
