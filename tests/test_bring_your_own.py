"""`mpo run` as a new user runs it: their model family, their data as it is, their verifier.

(a) A tiny Qwen2.5-family model, warm-started on sums, with a GSM8K-shaped JSONL (only `question` and
`answer`, answers ending in `#### N`) and a verifier in a module outside the package; (b) a tiny
Qwen2-VL-family model with a MathVista-shaped Parquet (an `Image` column, `query`, `answer`, `choices`,
`pid`) read through a column mapping. Each runs 3 rounds in a real `mpo run` subprocess (`--set` on the
command line); pairs are built, committed and trained on, and the stored shards read as TRL's DPO data
through TRL's own chat-template utility, giving exactly the prompt the run rendered.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import pytest
import yaml
from PIL import Image
from trl.data_utils import maybe_apply_chat_template

from mpo.chat import ChatRenderer
from mpo.cli import main
from mpo.config import BootstrapConfig, DataConfig
from mpo.data.records import PromptRecord
from mpo.data.sources import load_split
from mpo.models.families import build_family_model
from mpo.services.controller.store import RunStore
from mpo.trainer.sft import bootstrap
from mpo.v1 import common_pb2

pytestmark = pytest.mark.slow

GSM8K_VERIFIER = textwrap.dedent(
    """
    import re

    def last_number_matches(response, record):
        numbers = re.findall(r"-?\\d+", response.replace(",", ""))
        return bool(numbers) and numbers[-1] == record.answer
    """
)
#: A judge for a random-weight policy (which never states an answer): a score in [0, 1] from the number of
#: words, right often enough that every round has pairs; it exercises the score path of plug-in verifiers.
#: It also reads the record's `meta`, where the column mapping put MathVista's `question_type`: a prompt
#: that reached the reward service without it fails the round.
WORDS_VERIFIER = textwrap.dedent(
    """
    def word_count_score(response, record):
        if record.meta.get("question_type") != "multi_choice":
            raise ValueError(f"no question_type in meta: {record.meta!r}")
        return (len(response.split()) % 3) / 2
    """
)


def mpo_run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mpo.cli", "run", *args],
        capture_output=True, text=True, timeout=900, check=False, cwd=cwd,
    )  # fmt: skip


def gsm8k_rows(count: int, offset: int) -> list[dict[str, str]]:
    rows = []
    for i in range(count):
        a, b = (i + offset) % 10, (3 * i + offset) % 10
        rows.append({"question": f"What is {a} + {b}?", "answer": f"{a} plus {b} makes {a + b}.\n#### {a + b}"})
    return rows


def write_jsonl(rows: list[dict[str, str]], path: Path) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def demonstrate(record: PromptRecord, rng: random.Random) -> str:
    a, b = record.question.removeprefix("What is ").removesuffix("?").split(" + ")
    return f"{a} + {b} = {int(a) + int(b)}. Final answer: {int(a) + int(b)}"


def common_config(tmp_path: Path, model: Path, data: dict[str, object], **sections: object) -> Path:
    config = {
        "run_id": "byo",
        "model": str(model),
        "data": data,
        "store_dir": str(tmp_path / "store"),
        "rounds": {"rounds": 3, "prompts_per_round": 6, "samples_per_prompt": 4, "max_tokens": 24, "eval_prompts": 6},
        "rollout": {
            "dtype": "float32", "enforce_eager": True, "max_model_len": 512, "kv_cache_bytes": 16 * 2**20,
            "weights_dir": str(tmp_path / "ledger"),
        },
        "trainer": {
            "world_size": 2, "learning_rate": 1e-3, "warmup_steps": 0, "global_batch_pairs": 8,
            "micro_batch_pairs": 2, "max_length": 512, "checkpoint_dir": str(tmp_path / "checkpoints"),
        },
    } | sections  # fmt: skip
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def assert_trained_and_trl_readable(tmp_path: Path, renderer: ChatRenderer, processing: object) -> list[dict]:
    store = RunStore(tmp_path / "store")
    records = store.round_records("byo")
    assert [r.round for r in records] == [1, 2, 3]
    assert sum(r.labels.pairs_correctness + r.labels.pairs_dropout_ntp for r in records) > 0
    assert sum(r.train_steps for r in records) > 0
    shards = sorted((tmp_path / "store" / "runs" / "byo" / "pairs").glob("*.parquet"))
    rows = [row for shard in shards for row in datasets.load_dataset("parquet", data_files=str(shard), split="train")]
    assert rows
    for row in rows[:3]:
        rendered = maybe_apply_chat_template(
            {"prompt": row["prompt"], "chosen": row["chosen"], "rejected": row["rejected"]}, processing
        )
        pair = common_pb2.PreferencePair.FromString(row["pair"])
        assert rendered["prompt"] == renderer.prompt_text(pair.prompt.question, len(row["images"]))
        assert rendered["chosen"].startswith(pair.chosen)
    return rows


def test_qwen25_family_with_gsm8k_jsonl_and_a_verifier_from_outside_the_package(tmp_path: Path) -> None:
    train = write_jsonl(gsm8k_rows(60, 0), tmp_path / "gsm8k_train.jsonl")
    heldout = write_jsonl(gsm8k_rows(6, 500), tmp_path / "gsm8k_test.jsonl")
    data = {"train": str(train), "heldout": str(heldout), "task": "gsm8k", "answer_format": "gsm8k"}
    # A warm start on the same data, so samples at temperature 1 are right on some prompts and wrong on others.
    model = build_family_model("qwen2.5", tmp_path / "qwen25", seed=0)
    records = load_split(DataConfig.model_validate(data), "train", image_dir=None).records
    assert records[0].answer == "0" and records[0].task == "gsm8k"
    boot = BootstrapConfig(
        steps=150, batch_size=16, learning_rate=3e-3, warmup_steps=5, eval_every=1000, eval_prompts=4,
        stability_steps=0, pass_k=1, max_new_tokens=16, ema_decay=0.0,
    )  # fmt: skip
    bootstrap(model, tmp_path / "base", records, records[:4], demonstrate, boot, progress=False)
    user_code = tmp_path / "user_code"
    user_code.mkdir()
    (user_code / "gsm8k_check.py").write_text(GSM8K_VERIFIER)
    config = common_config(tmp_path, tmp_path / "base", data)
    result = mpo_run(
        "--config", str(config),
        "--set", f"reward.verifiers={{gsm8k: {user_code / 'gsm8k_check.py'}:last_number_matches}}",
        "--set", "rollout.backend=vllm",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    renderer = ChatRenderer(tmp_path / "base")
    rows = assert_trained_and_trl_readable(tmp_path, renderer, renderer.tokenizer)
    assert isinstance(rows[0]["prompt"][0]["content"], str), "text pairs use TRL's string content"


def mathvista_parquet(path: Path, count: int, offset: int) -> Path:
    """MathVista's shape: `pid`, `query` (the question with its own answer format), `choices`, `answer` (the
    option's text), `question_type`, `decoded_image` as an `Image` feature holding PNG bytes."""
    colours = ["red", "green", "blue"]
    rows: dict[str, list] = {key: [] for key in ("pid", "query", "choices", "answer", "question_type", "decoded_image")}
    for i in range(count):
        colour = colours[(i + offset) % 3]
        buffer = io.BytesIO()
        Image.new("RGB", (28, 28), colour).save(buffer, format="PNG")
        rows["pid"].append(str(offset + i))
        rows["query"].append("What colour is the square? Answer with the option's letter.")
        rows["choices"].append(colours)
        rows["answer"].append(colour)
        rows["question_type"].append("multi_choice")
        rows["decoded_image"].append({"bytes": buffer.getvalue(), "path": None})
    features = datasets.Features(
        {
            "pid": datasets.Value("string"),
            "query": datasets.Value("string"),
            "choices": datasets.Sequence(datasets.Value("string")),
            "answer": datasets.Value("string"),
            "question_type": datasets.Value("string"),
            "decoded_image": datasets.Image(),
        }
    )
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return path


def test_qwen2_vl_family_with_a_mathvista_parquet_through_a_column_mapping(tmp_path: Path) -> None:
    model = build_family_model("qwen2-vl", tmp_path / "qwen2vl", seed=0)
    data = {
        "train": str(mathvista_parquet(tmp_path / "testmini.parquet", 12, 0)),
        "heldout": str(mathvista_parquet(tmp_path / "heldout.parquet", 4, 100)),
        "columns": {"id": "pid", "question": "query", "images": "decoded_image", "choices": "choices"},
        "task": "mathvista",
    }
    user_code = tmp_path / "user_code"
    user_code.mkdir()
    (user_code / "judges.py").write_text(WORDS_VERIFIER)
    config = common_config(tmp_path, model, data, reward={"verifiers": {"mathvista": "judges:word_count_score"}})
    result = subprocess.run(
        [sys.executable, "-m", "mpo.cli", "run", "--config", str(config), "--set", "rounds.samples_per_prompt=4"],
        capture_output=True, text=True, timeout=900, check=False, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(user_code)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    renderer = ChatRenderer(model)
    rows = assert_trained_and_trl_readable(tmp_path, renderer, renderer.processor)
    assert rows[0]["images"] and rows[0]["prompt"][0]["content"][0]["type"] == "image"
    assert {image.size for row in rows for image in row["images"]} == {(28, 28)}


def test_a_users_mistakes_fail_with_the_field_named_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each mistake a new user makes is refused by `mpo run` in the pre-flight, naming the field, before Ray,
    vLLM or DeepSpeed start (nothing is written to the store)."""
    model = build_family_model("qwen2.5", tmp_path / "qwen25", seed=0)
    train = write_jsonl(gsm8k_rows(4, 0), tmp_path / "train.jsonl")
    data = {"train": str(train), "heldout": str(train), "task": "gsm8k", "answer_format": "gsm8k"}
    config = common_config(tmp_path, model, data, reward={"verifiers": {"gsm8k": "no_such_module:check"}})

    def refused(*args: str) -> str:
        assert main(["run", "--config", str(config), *args]) == 2
        assert not (tmp_path / "store").exists(), "nothing started, nothing stored"
        return capsys.readouterr().err

    assert "reward.verifiers.gsm8k" in refused() and "no_such_module" in refused()
    (tmp_path / "ok.py").write_text("def check(response, record):\n    return True\n")
    fine = f"reward.verifiers={{gsm8k: {tmp_path / 'ok.py'}:check}}"
    missing_column = refused("--set", fine, "--set", "data.columns={question: problem}")
    assert "data.columns.question" in missing_column and "problem" in missing_column and "answer" in missing_column
    tagged = write_jsonl([{**row, "subject": "geometry"} for row in gsm8k_rows(4, 0)], tmp_path / "tagged.jsonl")
    unknown = refused(
        "--set", fine, "--set", f"data.train={tagged}", "--set", f"data.heldout={tagged}",
        "--set", "data.columns={task: subject}",
    )  # fmt: skip
    assert "data.train: task 'geometry'" in unknown and "reward.verifiers" in unknown
    strict = tmp_path / "strict-template"
    shutil.copytree(model, strict)
    template = strict / "chat_template.jinja"
    template.write_text("{{ raise_exception('System role not supported') }}" + template.read_text())
    no_system = refused("--set", fine, "--set", f"model={strict}")
    assert "model:" in no_system and "System role not supported" in no_system
    budgets = refused("--set", fine, "--set", "rounds.max_tokens=4096")
    assert "rounds.max_tokens (4096) exceeds rollout.server.limits.max_tokens (2048)" in budgets


def test_mpo_eval_reads_the_runs_data_and_grades_with_its_verifier(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`mpo eval --config`: the held-out split through the run's mapping and answer format, judged by the run's
    plug-in verifier (one that checks the record it is given, so a wrong record would score 0)."""
    model = build_family_model("qwen2.5", tmp_path / "qwen25", seed=0)
    heldout = write_jsonl(gsm8k_rows(3, 7), tmp_path / "test.jsonl")
    data = {"train": str(heldout), "heldout": str(heldout), "task": "gsm8k", "answer_format": "gsm8k"}
    (tmp_path / "judge.py").write_text(
        "def knows_the_answer(response, record):\n    return record.task == 'gsm8k' and record.answer.isdigit()\n"
    )
    config = common_config(
        tmp_path, model, data, reward={"verifiers": {"gsm8k": f"{tmp_path / 'judge.py'}:knows_the_answer"}}
    )
    assert main(["eval", "--config", str(config), "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{\n") :])  # after any library warnings printed to stdout
    assert report["prompts"] == 3 and report["accuracy"] == 1.0 and report["per_task"] == {"gsm8k": 1.0}
