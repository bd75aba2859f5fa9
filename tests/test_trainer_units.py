"""The trainer's pure parts: the step plan, loss shares, δ with padding, and crash-safe checkpoints."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mpo.config import ObjectiveConfig, TrainerConfig
from mpo.models.logprobs import SequenceLogProbs
from mpo.trainer.checkpoints import CheckpointStore, checkpoint_name, read_checkpoint
from mpo.trainer.objective import MPOObjective
from mpo.trainer.plan import plan_epoch
from mpo.trainer.rank import learning_rate_ratio
from mpo.trainer.reward_shift import RewardShift


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 50), min_size=1, max_size=40),
    global_batch=st.integers(1, 12),
    micro_batch=st.integers(1, 4),
    world_size=st.integers(1, 3),
    seed=st.integers(0, 5),
)
def test_every_pair_once_and_ranks_in_lockstep(
    lengths: list[int], global_batch: int, micro_batch: int, world_size: int, seed: int
) -> None:
    steps = plan_epoch(lengths, global_batch=global_batch, micro_batch=micro_batch, world_size=world_size, seed=seed)
    seen = [i for step in steps for rank in step.micro_batches for batch in rank for i in batch]
    assert sorted(seen) == list(range(len(lengths)))
    for step in steps:
        assert step.pairs == sum(len(b) for rank in step.micro_batches for b in rank) <= global_batch
        counts = {len(rank) for rank in step.micro_batches}
        assert len(counts) == 1, "every rank runs the same number of micro-batches"
        assert all(len(b) <= micro_batch for rank in step.micro_batches for b in rank)
        sizes = [len(b) for rank in step.micro_batches for b in rank]
        assert max(sizes) - min(sizes) <= 1, "micro-batches are as even as possible"


def test_the_plan_is_seeded_and_buckets_by_length() -> None:
    lengths = list(range(100, 0, -1))
    one = plan_epoch(lengths, global_batch=8, micro_batch=2, world_size=2, seed=3)
    assert one == plan_epoch(lengths, global_batch=8, micro_batch=2, world_size=2, seed=3)
    assert one != plan_epoch(lengths, global_batch=8, micro_batch=2, world_size=2, seed=4)
    step = one[0]
    batches = [b for k in range(2) for b in (step.micro_batches[0][k], step.micro_batches[1][k])]
    spans = [[lengths[i] for i in b] for b in batches]
    assert all(max(a) <= min(b) for a, b in itertools.pairwise(spans)), "sorted buckets"


def test_fewer_pairs_than_ranks_gives_a_padding_micro_batch() -> None:
    (step,) = plan_epoch([5], global_batch=4, micro_batch=2, world_size=2, seed=0)
    assert step.micro_batches == (((0,),), ((),))


def _logps(values: list[float], tokens: list[int]) -> SequenceLogProbs:
    return SequenceLogProbs(torch.tensor(values, dtype=torch.float64), torch.tensor(tokens))


def test_micro_batch_shares_add_up_to_the_big_batch_loss() -> None:
    """Gradient accumulation and data parallelism give the same step as one batch of all the pairs."""
    torch.manual_seed(0)
    config = ObjectiveConfig()
    chosen, rejected = torch.randn(6, dtype=torch.float64) - 5, torch.randn(6, dtype=torch.float64) - 6
    ref_c, ref_r = torch.randn(6, dtype=torch.float64) - 5, torch.randn(6, dtype=torch.float64) - 6
    tokens = [3, 7, 2, 9, 4, 5]
    whole = MPOObjective(config, RewardShift(lambda v: v))(
        _logps(chosen.tolist(), tokens), _logps(rejected.tolist(), tokens), ref_c, ref_r
    )
    shift = RewardShift(lambda v: v)
    shift.load_state_dict({"mean": float(whole.metrics["reward_shift"]), "count": 1})
    objective = MPOObjective(config, shift)  # the halves read the whole batch's δ (training=False)
    total = 0.0
    for part in (slice(0, 2), slice(2, 6)):
        out = objective(
            _logps(chosen[part].tolist(), tokens[part]),
            _logps(rejected[part].tolist(), tokens[part]),
            ref_c[part],
            ref_r[part],
            training=False,
            step_pairs=6,
            step_chosen_tokens=sum(tokens),
        )
        total += float(out.loss)
    assert total == pytest.approx(float(whole.loss), rel=1e-12)


def test_padding_micro_batches_do_not_vote_in_delta_and_add_no_loss() -> None:
    votes: list[torch.Tensor] = []

    def two_ranks(local: torch.Tensor) -> torch.Tensor:  # the other rank had padding
        votes.append(local)
        return local + torch.tensor([0.0, 0.0], dtype=torch.float64)

    objective = MPOObjective(ObjectiveConfig(), RewardShift(two_ranks))
    out = objective(_logps([-3.0], [2]), _logps([-4.0], [2]), torch.tensor([-3.5]), torch.tensor([-3.5]), padding=True)
    assert float(out.loss) == 0.0
    assert objective.reward_shift.value == 0.0 and objective.reward_shift.count == 0
    assert votes[0][1] == 0.0
    out = objective(_logps([-3.0], [2]), _logps([-4.0], [2]), torch.tensor([-3.5]), torch.tensor([-4.5]))
    assert objective.reward_shift.count == 1
    assert objective.reward_shift.value == pytest.approx(0.05)  # mean of z_c = z_r = 0.1 × 0.5
    assert float(out.loss) > 0


def test_a_checkpoint_write_cut_short_leaves_the_last_one_valid(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    first = store.staging(checkpoint_name(3))
    (first / "shard.pt").write_bytes(b"complete")
    store.commit(checkpoint_name(3), {"step": 3})
    # A crash while writing the next one: files half written, never committed.
    torn = store.staging(checkpoint_name(5))
    (torn / "shard.pt").write_bytes(b"half")
    reopened = CheckpointStore(tmp_path, keep=2)
    latest = reopened.latest()
    assert latest is not None and latest.meta == {"step": 3}
    assert (latest.path / "shard.pt").read_bytes() == b"complete"
    assert not torn.exists(), "the torn write is cleared on start"
    with pytest.raises(ValueError, match="never rewritten"):
        reopened.staging(checkpoint_name(3)) and reopened.commit(checkpoint_name(3), {"step": 3})


def test_only_the_newest_checkpoints_are_kept(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    for step in (1, 2, 3):
        store.staging(checkpoint_name(step))
        store.commit(checkpoint_name(step), {"step": step})
    kept = sorted(p.name for p in tmp_path.iterdir() if (p / "trainer.json").exists())
    assert kept == [checkpoint_name(2), checkpoint_name(3)]
    assert json.loads((tmp_path / checkpoint_name(3) / "trainer.json").read_text()) == {"step": 3}
    assert read_checkpoint(tmp_path / checkpoint_name(2)).meta == {"step": 2}
    with pytest.raises(FileNotFoundError, match="not a trainer checkpoint"):
        read_checkpoint(tmp_path)


def test_the_best_checkpoint_outlives_pruning_until_another_is_best(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)

    def commit(step: int) -> None:
        store.staging(checkpoint_name(step))
        store.commit(checkpoint_name(step), {"step": step})

    def kept() -> list[str]:
        return sorted(p.name for p in tmp_path.iterdir() if (p / "trainer.json").exists())

    commit(1)
    assert store.mark_best(checkpoint_name(1)).meta == {"step": 1}
    for step in (2, 3, 4):
        commit(step)
    assert kept() == [checkpoint_name(1), checkpoint_name(3), checkpoint_name(4)]
    best = CheckpointStore(tmp_path, keep=2).best()  # the mark survives a restart
    assert best is not None and best.name == checkpoint_name(1)
    store.mark_best(checkpoint_name(4))
    assert kept() == [checkpoint_name(3), checkpoint_name(4)], "the former best is an old checkpoint now"
    with pytest.raises(ValueError, match="no committed checkpoint"):
        store.mark_best(checkpoint_name(9))


def test_trainer_config_checks_batch_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="global_batch_pairs"):
        TrainerConfig(model=tmp_path, world_size=2, micro_batch_pairs=4, global_batch_pairs=4)


def test_the_learning_rate_warms_up_decays_and_then_stays_at_the_floor() -> None:
    ratios = [learning_rate_ratio(step, warmup=4, decay=10, floor=0.1) for step in range(30)]
    assert ratios[:5] == [0.0, 0.25, 0.5, 0.75, 1.0]
    decaying = ratios[4:15]
    assert all(a > b for a, b in itertools.pairwise(decaying))
    assert ratios[14] == pytest.approx(0.1) and set(ratios[14:]) == {ratios[14]}, "no climb after the decay"
    assert learning_rate_ratio(0, warmup=0, decay=10, floor=0.0) == 1.0
