"""The closing lines of `mpo demo`, from a real run store written through its own API: what the rounds
gained on the held-out split, and where to look next."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpo.config import RunConfig
from mpo.demo import held_out_gains, next_steps
from mpo.services.controller.store import RunStore
from mpo.v1 import common_pb2, controller_pb2


def finish_round(store: RunStore, run_id: str, index: int, accuracy: dict[str, float]) -> None:
    store.commit_pairs(run_id, index, [])
    store.store_round(common_pb2.RoundMetrics(run_id=run_id, round=index, eval_accuracy=accuracy))


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return RunStore(tmp_path / "store")


def test_the_gain_is_the_last_evaluated_round_over_the_base(store: RunStore) -> None:
    store.put_run(controller_pb2.Run(run_id="demo", base_eval_accuracy={"arith": 0.48, "shapes": 0.5}))
    finish_round(store, "demo", 1, {"arith": 0.5, "shapes": 0.25})
    finish_round(store, "demo", 2, {"arith": 0.531, "shapes": 0.625})
    finish_round(store, "demo", 3, {})  # not evaluated: the last evaluated round counts
    assert held_out_gains(store, "demo") == [
        "held-out arith: base 48.0% -> round 2 53.1% (+5.1 points)",
        "held-out shapes: base 50.0% -> round 2 62.5% (+12.5 points)",
    ]


def test_a_task_the_base_never_saw_gains_from_zero_and_a_loss_is_signed(store: RunStore) -> None:
    store.put_run(controller_pb2.Run(run_id="demo", base_eval_accuracy={"arith": 0.6}))
    finish_round(store, "demo", 1, {"arith": 0.55, "describe": 0.2})
    assert held_out_gains(store, "demo") == [
        "held-out arith: base 60.0% -> round 1 55.0% (-5.0 points)",
        "held-out describe: base 0.0% -> round 1 20.0% (+20.0 points)",
    ]


def test_no_gain_without_a_base_evaluation_or_an_evaluated_round(store: RunStore) -> None:
    assert held_out_gains(store, "absent") == []
    store.put_run(controller_pb2.Run(run_id="unevaluated-base"))
    finish_round(store, "unevaluated-base", 1, {"arith": 0.5})
    assert held_out_gains(store, "unevaluated-base") == []
    store.put_run(controller_pb2.Run(run_id="no-rounds", base_eval_accuracy={"arith": 0.5}))
    finish_round(store, "no-rounds", 1, {})
    assert held_out_gains(store, "no-rounds") == []


def test_next_steps_point_at_the_run_in_its_store(tmp_path: Path) -> None:
    config = RunConfig(store_dir=tmp_path / "store", pairs_dir=tmp_path / "shared")
    store = RunStore(config.store_dir, pairs_dir=config.pairs_dir)
    assert next_steps(store, config, "demo-seed0", rounds=60) == [
        f"pairs (Parquet, TRL DPO columns): {tmp_path / 'shared' / 'demo-seed0'}",
        f"metrics: tensorboard --logdir {tmp_path / 'store' / 'runs' / 'demo-seed0' / 'tensorboard'}",
        f"dashboard: mpo dashboard --store-dir {tmp_path / 'store'} (then open http://127.0.0.1:8265/#/runs/demo-seed0)",
        f"more rounds: mpo run --resume demo-seed0 --store-dir {tmp_path / 'store'} --rounds 65",
    ]
