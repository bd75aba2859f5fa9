"""A real run store with recorded rounds and pairs (images included), as a controller writes it."""

from __future__ import annotations

import io
import time

from PIL import Image

from mpo.services.controller.store import RunStore
from mpo.v1 import common_pb2, controller_pb2


def png(color: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(out, format="PNG")
    return out.getvalue()


def record_pairs(run_id: str, round_index: int) -> list[common_pb2.PreferencePair]:
    """Two correctness pairs (text task) and one DropoutNTP pair with an image."""
    pairs = []
    for k in range(2):
        pairs.append(
            common_pb2.PreferencePair(
                id=f"{run_id}-r{round_index}-c{k}",
                prompt=common_pb2.Prompt(id=f"p{round_index}{k}", question=f"What is {round_index} + {k}?",
                                         answer=str(round_index + k), task="arith"),
                chosen=f"{round_index} + {k} = {round_index + k}. Final answer: {round_index + k}",
                rejected=f"{round_index} + {k} = 99. Final answer: 99",
                source=common_pb2.PAIR_SOURCE_CORRECTNESS,
                provenance=common_pb2.Provenance(policy_version=round_index - 1, round=round_index,
                                                 verifier="numeric", chosen_answer=str(round_index + k),
                                                 rejected_answer="99"),
            )
        )  # fmt: skip
    pairs.append(
        common_pb2.PreferencePair(
            id=f"{run_id}-r{round_index}-d",
            prompt=common_pb2.Prompt(id=f"s{round_index}", question="What colour is the shape?", answer="red",
                                     task="shapes", images=[common_pb2.Image(data=png((200, 0, 0)))]),
            chosen="The shape is red. Final answer: red",
            rejected="The shape is blue and large",
            source=common_pb2.PAIR_SOURCE_DROPOUT_NTP,
            provenance=common_pb2.Provenance(policy_version=round_index - 1, round=round_index),
        )
    )  # fmt: skip
    return pairs


def hallucination(rate: float) -> common_pb2.Hallucination:
    return common_pb2.Hallucination(rate=rate, mentions=2 * rate, recall=0.9 - rate, descriptions=12)


def round_metrics(run_id: str, round_index: int, *, evaluate: bool) -> common_pb2.RoundMetrics:
    return common_pb2.RoundMetrics(
        run_id=run_id,
        round=round_index,
        rollout_policy_version=round_index - 1,
        trained_policy_version=round_index,
        labels=common_pb2.LabelStats(prompts=8, samples=32, correct=10 + round_index, wrong=22 - round_index,
                                     prompts_all_correct=1, prompts_all_wrong=3, pairs_correctness=2,
                                     pairs_dropout_ntp=1),
        train=common_pb2.StepMetrics(step=round_index, loss=0.9 - 0.05 * round_index, loss_preference=0.69,
                                     loss_quality=0.7, loss_generation=1.2, reward_shift=0.01 * round_index,
                                     reward_margin=0.1 * round_index, preference_accuracy=0.5 + 0.05 * round_index),
        train_steps=1,
        timings=common_pb2.PhaseTimings(generate=2.0, label=0.1, commit=0.05, train=1.5, publish=0.2,
                                        eval=0.5 if evaluate else 0.0, overhead=0.1, total=4.45),
        rollout_tokens_per_second=300.0 + round_index,
        eval_accuracy={"arith": 0.25 + 0.01 * round_index, "shapes": 0.5} if evaluate else {},
        eval_degenerate={"arith": 0.2 - 0.02 * round_index, "shapes": 0.1} if evaluate else {},
        eval_hallucination={"describe": hallucination(0.4 - 0.05 * round_index)} if evaluate else {},
        finished_at=time.time(),
    )  # fmt: skip


def start_run(store: RunStore, run_id: str, state: int = controller_pb2.RUN_STATE_RUNNING) -> None:
    now = time.time()
    store.put_run(
        controller_pb2.Run(run_id=run_id, state=state, started_at=now - 60, updated_at=now, config_yaml="rounds: {}\n",
                           base_eval_accuracy={"arith": 0.25, "shapes": 0.5},
                           base_eval_degenerate={"arith": 0.2, "shapes": 0.1},
                           base_eval_hallucination={"describe": hallucination(0.4)})
    )  # fmt: skip


def record_round(store: RunStore, run_id: str, round_index: int, *, evaluate: bool = True) -> common_pb2.RoundMetrics:
    """Commit, train-mark and finish one round the way the round loop does."""
    store.commit_pairs(run_id, round_index, record_pairs(run_id, round_index))
    store.mark_trained(run_id, round_index, round_index, trained_version=round_index)
    record = round_metrics(run_id, round_index, evaluate=evaluate)
    store.store_round(record)
    run = store.get_run(run_id)
    assert run is not None
    run.current_round, run.policy_version, run.updated_at = round_index, round_index, time.time()
    store.put_run(run)
    return record
