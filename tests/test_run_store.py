"""The controller's pure parts: the run store (exactly-once commits, kill -9, TRL-readable shards) and the
prompt sampler."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets
import pytest
from PIL import Image as PILImage

from mpo.config import PromptConfig
from mpo.services.controller.scheduling import PromptSampler
from mpo.services.controller.store import RunStore, StoreError
from mpo.v1 import common_pb2, controller_pb2
from tests.controller_helpers import sums
from tests.rollout_helpers import png


def pairs_of(round_index: int, count: int, *, with_image: bool = False) -> list[common_pb2.PreferencePair]:
    pairs = []
    for i in range(count):
        prompt = common_pb2.Prompt(
            id=f"q{round_index}-{i}", question=f"What is {i} + 1?", task="arith", answer=str(i + 1)
        )
        if with_image:
            prompt.images.add(data=png("red" if i % 2 else "blue"))
        pairs.append(
            common_pb2.PreferencePair(
                id=f"r{round_index}-p{i}",
                prompt=prompt,
                chosen=f"{i} + 1 = {i + 1}. Final answer: {i + 1}",
                rejected=f"{i} + 1 = {i + 2}. Final answer: {i + 2}",
                source=common_pb2.PAIR_SOURCE_CORRECTNESS,
                provenance=common_pb2.Provenance(policy_version=round_index - 1, round=round_index),
            )
        )
    return pairs


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    store = RunStore(tmp_path / "store")
    store.put_run(controller_pb2.Run(run_id="run-a", state=controller_pb2.RUN_STATE_RUNNING, config_yaml="{}"))
    return store


def test_a_round_is_committed_exactly_once(store: RunStore) -> None:
    first = store.commit_pairs("run-a", 1, pairs_of(1, 3))
    again = store.commit_pairs("run-a", 1, pairs_of(1, 5))  # a retried commit must not replace the first
    assert first.newly_committed and not again.newly_committed
    assert again.pairs == 3 and store.pair_count("run-a") == 3
    assert [p.id for p in store.committed_pairs("run-a", 1)] == ["r1-p0", "r1-p1", "r1-p2"]
    assert store.last_committed_round("run-a") == 1
    assert [r.round for r in store.unfinished_rounds("run-a")] == [1]
    assert store.pair_staleness("run-a") == {}, "nothing trained yet"
    trained = common_pb2.RoundMetrics(run_id="run-a", round=1, train_steps=4)
    store.mark_trained("run-a", 1, step=4, trained_version=1, partial=trained)
    # Finishing the round again after a crash neither re-dates its pairs nor loses its training figures.
    store.mark_trained("run-a", 1, step=4, trained_version=3, partial=common_pb2.RoundMetrics(run_id="run-a", round=1))
    assert store.unfinished_rounds("run-a") == [trained]
    store.store_round(common_pb2.RoundMetrics(run_id="run-a", round=1, train_steps=4))
    assert store.unfinished_rounds("run-a") == []
    assert store.pair_staleness("run-a") == {"r1-p0": 1, "r1-p1": 1, "r1-p2": 1}  # samples of version 0
    assert store.pair_staleness("run-a", 1) == store.pair_staleness("run-a") and store.pair_staleness("run-a", 2) == {}


def test_committed_pairs_come_back_exactly_with_their_images(store: RunStore) -> None:
    original = pairs_of(2, 4, with_image=True)
    store.commit_pairs("run-a", 2, original)
    assert store.committed_pairs("run-a", 2) == original


def test_shards_load_as_a_dpo_dataset_with_decoded_images(store: RunStore) -> None:
    committed = store.commit_pairs("run-a", 1, pairs_of(1, 2, with_image=True))
    data = datasets.load_dataset("parquet", data_files=str(committed.shard), split="train")
    assert {"prompt", "chosen", "rejected", "images"} <= set(data.column_names)
    row = data[0]
    assert row["prompt"][0]["role"] == "user" and row["prompt"][0]["content"][0]["type"] == "image"
    assert "What is 0 + 1?" in row["prompt"][0]["content"][1]["text"]
    assert row["chosen"] == [{"role": "assistant", "content": [{"type": "text", "text": "0 + 1 = 1. Final answer: 1"}]}]
    assert isinstance(row["images"][0], PILImage.Image) and row["images"][0].getpixel((0, 0)) == (0, 0, 255)


def test_text_shards_carry_string_content_and_the_configured_system_turn(store: RunStore) -> None:
    """TRL's text convention: string content; the conversation is the one the run rendered."""
    prompt = PromptConfig(system_prompt="You are terse.", instruction="Solve it.")
    committed = store.commit_pairs("run-a", 1, pairs_of(1, 2), prompt=prompt)
    row = datasets.load_dataset("parquet", data_files=str(committed.shard), split="train")[0]
    assert row["prompt"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Solve it.\n\nWhat is 0 + 1?"},
    ]
    assert row["chosen"] == [{"role": "assistant", "content": "0 + 1 = 1. Final answer: 1"}]
    assert row["images"] == []


def test_store_refuses_what_contradicts_the_ledger(store: RunStore) -> None:
    with pytest.raises(StoreError, match="unknown run"):
        store.commit_pairs("nope", 1, pairs_of(1, 1))
    store.commit_pairs("run-a", 1, pairs_of(1, 2))
    with pytest.raises(StoreError, match="repeats a pair id"):
        store.commit_pairs("run-a", 2, pairs_of(1, 2))  # same ids as round 1
    assert store.last_committed_round("run-a") == 1, "the failed commit left nothing behind"
    with pytest.raises(StoreError, match="not committed"):
        store.mark_trained("run-a", 7, step=1, trained_version=0)
    with pytest.raises(StoreError, match="not committed"):
        store.store_round(common_pb2.RoundMetrics(run_id="run-a", round=7))


def test_round_records_are_stored_in_order(store: RunStore) -> None:
    for round_index in (1, 2):
        partial = common_pb2.RoundMetrics(run_id="run-a", round=round_index, rollout_policy_version=round_index - 1)
        store.commit_pairs("run-a", round_index, pairs_of(round_index, 1), partial)
    assert store.unfinished_rounds("run-a")[1].rollout_policy_version == 1, "the partial record is kept"
    assert store.round_records("run-a") == [], "unfinished rounds have no record yet"
    store.store_round(common_pb2.RoundMetrics(run_id="run-a", round=2, train_steps=3))
    store.store_round(common_pb2.RoundMetrics(run_id="run-a", round=1, train_steps=1))
    assert [r.train_steps for r in store.round_records("run-a")] == [1, 3]
    assert [r.round for r in store.round_records("run-a", from_round=2)] == [2]
    assert [run.run_id for run in store.list_runs()] == ["run-a"]


def test_what_was_committed_survives_kill_9(tmp_path: Path) -> None:
    """A real process commits rounds and is SIGKILLed while committing more; the store keeps every
    round whose commit returned, and an interrupted one is simply committed again."""
    root = tmp_path / "store"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
        from mpo.services.controller.store import RunStore
        from mpo.v1 import controller_pb2
        from tests.test_run_store import pairs_of
        store = RunStore({str(root)!r})
        store.put_run(controller_pb2.Run(run_id="run-k"))
        round_index = 0
        while True:
            round_index += 1
            store.commit_pairs("run-k", round_index, pairs_of(round_index, 20))
            print(round_index, flush=True)
        """
    )
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None
    acknowledged = [int(writer.stdout.readline()) for _ in range(3)]
    writer.kill()
    writer.wait(timeout=30)
    store = RunStore(root)
    last = store.last_committed_round("run-k")
    assert last >= acknowledged[-1]
    for round_index in range(1, last + 1):
        assert len(store.committed_pairs("run-k", round_index)) == 20
    assert store.pair_count("run-k") == 20 * last
    retried = store.commit_pairs("run-k", last + 1, pairs_of(last + 1, 20))
    assert retried.newly_committed and store.pair_count("run-k") == 20 * (last + 1)


def test_shards_go_under_pairs_dir_and_the_database_stays_in_the_store(tmp_path: Path) -> None:
    """The chart's split: SQLite on the head pod's own volume, the shards on the shared one."""
    state, shared = tmp_path / "state", tmp_path / "shared" / "pairs"
    store = RunStore(state, pairs_dir=shared)
    store.put_run(controller_pb2.Run(run_id="run-a"))
    originals = {round_index: pairs_of(round_index, 3, with_image=True) for round_index in (1, 2)}
    for round_index, pairs in originals.items():
        committed = store.commit_pairs("run-a", round_index, pairs)
        assert committed.shard == shared / "run-a" / f"round-{round_index:06d}.parquet" and committed.shard.is_file()
    assert store.pairs_folder("run-a") == shared / "run-a"
    assert sorted(path.name for path in state.rglob("*") if path.is_file()) == ["runs.sqlite3"]
    assert not list(shared.rglob("*.sqlite3*")), "no database file on the shared volume"
    loaded = datasets.load_dataset("parquet", data_files=str(store.shard_path("run-a", 2)), split="train")
    assert len(loaded) == 3 and isinstance(loaded[0]["images"][0], PILImage.Image)

    # Reopened after a restart without pairs_dir (`mpo dashboard --store-dir`), or with another one: the
    # committed rounds are read from where they were written, and new rounds go to the new folder.
    for reopened in (RunStore(state), RunStore(state, pairs_dir=tmp_path / "elsewhere")):
        assert [reopened.committed_pairs("run-a", r) for r in (1, 2)] == [originals[1], originals[2]]
        assert reopened.shard_path("run-a", 1) == shared / "run-a" / "round-000001.parquet"
    moved = RunStore(state, pairs_dir=tmp_path / "elsewhere").commit_pairs("run-a", 3, pairs_of(3, 1))
    assert moved.shard == tmp_path / "elsewhere" / "run-a" / "round-000003.parquet" and moved.shard.is_file()
    with pytest.raises(StoreError, match="round 4 of run 'run-a' is not committed"):
        store.shard_path("run-a", 4)


def test_a_relative_pairs_dir_is_recorded_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = RunStore(Path("state"), pairs_dir=Path("pairs"))
    store.put_run(controller_pb2.Run(run_id="run-a"))
    store.commit_pairs("run-a", 1, pairs_of(1, 2))
    monkeypatch.chdir(tmp_path / "state")  # another working directory, e.g. a restarted process's
    reopened = RunStore(tmp_path / "state")
    assert reopened.shard_path("run-a", 1) == tmp_path / "pairs" / "run-a" / "round-000001.parquet"
    assert [p.id for p in reopened.committed_pairs("run-a", 1)] == ["r1-p0", "r1-p1"]


def test_a_store_without_pairs_dir_keeps_its_shards_beside_the_database_and_can_move(tmp_path: Path) -> None:
    """The layout of every store written before pairs_dir: shard paths recorded relative to the store."""
    store = RunStore(tmp_path / "store")
    store.put_run(controller_pb2.Run(run_id="run-a"))
    committed = store.commit_pairs("run-a", 1, pairs_of(1, 2))
    assert committed.shard == tmp_path / "store" / "runs" / "run-a" / "pairs" / "round-000001.parquet"
    with sqlite3.connect(store.database) as db:
        assert db.execute("SELECT shard FROM rounds").fetchall() == [("runs/run-a/pairs/round-000001.parquet",)]
    (tmp_path / "store").rename(tmp_path / "moved")
    moved = RunStore(tmp_path / "moved")
    assert moved.shard_path("run-a", 1) == tmp_path / "moved" / "runs" / "run-a" / "pairs" / "round-000001.parquet"
    assert [p.id for p in moved.committed_pairs("run-a", 1)] == ["r1-p0", "r1-p1"]


def test_the_prompt_order_is_a_seeded_sequence_of_shuffled_epochs() -> None:
    records = sums(10, 0)
    sampler = PromptSampler(records, per_round=4, seed=3)
    drawn = [[r.id for r in sampler.round(k)] for k in range(1, 31)]
    # Two rounds per shuffle of the 10 prompts: 8 distinct prompts, the 2 left over change each time.
    epochs = [drawn[k] + drawn[k + 1] for k in range(0, 30, 2)]
    assert all(len(set(epoch)) == 8 for epoch in epochs)
    assert epochs[0] != epochs[1], "each epoch is shuffled anew"
    assert set().union(*epochs) == {r.id for r in records}, "no prompt is left out for good"
    assert [r.id for r in PromptSampler(records, per_round=4, seed=3).round(4)] == drawn[3], "resumable"


@pytest.mark.parametrize(("size", "per_round"), [(10, 4), (10, 10), (5000, 128), (5000, 256), (7, 3)])
def test_no_round_draws_a_prompt_twice(size: int, per_round: int) -> None:
    """A round across the end of a shuffle once drew a prompt twice (Generate refuses duplicate ids)."""
    sampler = PromptSampler(sums(size, 0), per_round=per_round, seed=0)
    for k in range(1, 3 * size // per_round + 2):
        ids = [r.id for r in sampler.round(k)]
        assert len(ids) == per_round == len(set(ids)), f"round {k}"


def test_a_round_larger_than_the_prompt_set_is_refused() -> None:
    with pytest.raises(ValueError, match="prompts_per_round: 11, but the prompt set has 10 prompts"):
        PromptSampler(sums(10, 0), per_round=11, seed=0)
    other = [r.model_copy(update={"id": f"o{i}", "task": "other"}) for i, r in enumerate(sums(2, 50))]
    with pytest.raises(ValueError, match="task_mix: 3 other prompts per round, but the prompt set has 2"):
        PromptSampler(sums(10, 0) + other, per_round=6, seed=0, mix={"arith": 1, "other": 1})


def test_a_task_mix_fixes_each_rounds_share_per_task() -> None:
    other = [r.model_copy(update={"id": f"o{i}", "task": "other"}) for i, r in enumerate(sums(7, 50))]
    sampler = PromptSampler(sums(10, 0) + other, per_round=5, seed=1, mix={"arith": 3, "other": 2})
    rounds = [sampler.round(k) for k in range(1, 8)]
    assert all([r.task for r in drawn] == ["arith"] * 3 + ["other"] * 2 for drawn in rounds)
    others = [r.id for drawn in rounds for r in drawn if r.task == "other"]
    arith = [r.id for drawn in rounds for r in drawn if r.task == "arith"]
    assert len(set(others[:6])) == 6 and len(set(arith[:9])) == 9, "each task has its own epochs"
    assert sampler.round(6) == PromptSampler(
        sums(10, 0) + other, per_round=5, seed=1, mix={"arith": 3, "other": 2}
    ).round(6)
    with pytest.raises(ValueError, match="task_mix names tasks without prompts: shapes"):
        PromptSampler(sums(10, 0), per_round=5, seed=1, mix={"shapes": 1.0})
