"""A stored round's figures as Prometheus gauges and TensorBoard scalars, hallucination included."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mpo.services.controller.metrics import EventFiles, RoundGauges, scalars
from mpo.v1 import common_pb2


def evaluated_round(round_index: int, rate: float) -> common_pb2.RoundMetrics:
    return common_pb2.RoundMetrics(
        run_id="run",
        round=round_index,
        eval_accuracy={"shapes": 0.5},
        eval_degenerate={"shapes": 0.25, "describe": 0.125},
        eval_hallucination={"describe": common_pb2.Hallucination(rate=rate, mentions=2.5, recall=0.75, descriptions=8)},
    )


def test_hallucination_is_a_gauge_per_task_and_measure() -> None:
    registry = CollectorRegistry()
    gauges = RoundGauges(registry)
    gauges.observe(evaluated_round(1, 0.5))
    gauges.observe(evaluated_round(2, 0.375))
    text = generate_latest(registry).decode()
    assert 'mpo_eval_hallucination{measure="rate",run_id="run",task="describe"} 0.375' in text
    assert 'mpo_eval_hallucination{measure="mentions",run_id="run",task="describe"} 2.5' in text
    assert 'mpo_eval_hallucination{measure="recall",run_id="run",task="describe"} 0.75' in text
    assert 'mpo_eval_degenerate_share{run_id="run",task="describe"} 0.125' in text
    assert 'task="shapes"' in text and 'mpo_eval_hallucination{measure="rate",run_id="run",task="shapes"}' not in text


def test_hallucination_goes_to_tensorboard_under_its_task(tmp_path: Path) -> None:
    assert scalars(evaluated_round(1, 0.5))["eval_hallucination/describe/recall"] == 0.75
    files = EventFiles(tmp_path)
    for round_index, rate in ((1, 0.5), (2, 0.375)):
        files.write(evaluated_round(round_index, rate))
    files.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    rates = events.Scalars("eval_hallucination/describe/rate")
    assert [e.step for e in rates] == [1, 2] and [e.value for e in rates] == pytest.approx([0.5, 0.375])
    assert "eval_hallucination/shapes/rate" not in events.Tags()["scalars"]
