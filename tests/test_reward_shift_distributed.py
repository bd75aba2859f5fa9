"""δ across data-parallel ranks, with a real 2-process gloo group (torch.distributed, no stand-in)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mpo.net import free_port
from mpo.trainer import RewardShift

WORLD_SIZE = 2
MICRO_BATCHES = 6
RESUME_AFTER = 3


def rank_rewards(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic, rank-dependent rewards; ranks hold different numbers of pairs."""
    generator = torch.Generator().manual_seed(100 * rank + step)
    pairs = 2 + rank
    return torch.randn(pairs, generator=generator) + rank, torch.randn(pairs, generator=generator) - step


def _rank_main(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD_SIZE)
    try:
        shift, deltas = RewardShift(), []
        for step in range(MICRO_BATCHES):
            if step == RESUME_AFTER:  # simulate a checkpoint/resume in the middle of training
                saved = json.loads(json.dumps(shift.state_dict()))
                shift = RewardShift()
                shift.load_state_dict(saved)
            deltas.append(shift.update(*rank_rewards(rank, step)))
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(deltas))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_delta_is_the_cumulative_mean_of_rank_averaged_micro_batch_means(tmp_path: Path) -> None:
    mp.spawn(_rank_main, args=(free_port(), str(tmp_path)), nprocs=WORLD_SIZE, join=True)
    per_rank = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]

    expected, seen = [], []
    for step in range(MICRO_BATCHES):
        rank_means = [torch.cat(rank_rewards(r, step)).double().mean().item() for r in range(WORLD_SIZE)]
        seen.append(sum(rank_means) / WORLD_SIZE)  # unweighted mean over ranks, one scalar per micro-batch
        expected.append(sum(seen) / len(seen))
    for rank, deltas in enumerate(per_rank):
        assert deltas == pytest.approx(expected, abs=1e-12), f"rank {rank}"
    assert per_rank[0] == per_rank[1], "every rank must hold the same δ"
    # Sanity: the rank average differs from either rank's own mean, so the reduction really happened.
    own_rank0 = torch.cat(rank_rewards(0, 0)).double().mean().item()
    assert per_rank[0][0] != pytest.approx(own_rank0, abs=1e-6)


def test_single_process_reducer_is_the_identity() -> None:
    shift = RewardShift()
    assert shift.update(torch.tensor([1.0, 3.0]), torch.tensor([2.0])) == pytest.approx(2.0)
    assert shift.update(torch.tensor([0.0]), torch.tensor([0.0])) == pytest.approx(1.0)
