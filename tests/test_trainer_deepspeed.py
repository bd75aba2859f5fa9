"""The trainer on real DeepSpeed (ZeRO-3 over gloo) and real Ray, with tiny models the project builds.

Each test starts its own `TrainerHost` (rank actors, process group, models) so runs never share state;
a host starts in a few seconds once DeepSpeed's CPU communication op is compiled (first run only).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import pytest_asyncio
import ray
import torch
from safetensors.torch import load

from mpo.config import TrainerConfig
from mpo.models.tiny import build_image_text_model, build_text_model
from mpo.trainer.export import export_checkpoint
from mpo.trainer.group import RankFailure
from mpo.trainer.host import TrainerHost
from mpo.trainer.reward_shift import RewardShift
from mpo.v1 import common_pb2
from tests.process_helpers import actor_pid, thread_affinities
from tests.rollout_helpers import CORPUS, SMALL, VISION, png

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest.fixture(scope="module")
def text_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_text_model(tmp_path_factory.mktemp("trainer-text"), CORPUS, SMALL, seed=0)


@pytest.fixture(scope="module")
def image_text_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_image_text_model(tmp_path_factory.mktemp("trainer-vl"), CORPUS, SMALL, VISION, seed=0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def local_ray() -> AsyncIterator[None]:
    ray.init(num_cpus=8, include_dashboard=False, namespace="mpo-trainer-tests", log_to_driver=False)
    yield
    ray.shutdown()


def arith_pairs(count: int, *, start: int = 0, prefix: str = "p") -> list[common_pb2.PreferencePair]:
    pairs = []
    for i in range(start, start + count):
        a, b = i % 20, (3 * i) % 20
        prompt = common_pb2.Prompt(id=f"q{i}", question=f"What is {a} + {b}?", task="arith", answer=str(a + b))
        pairs.append(
            common_pb2.PreferencePair(
                id=f"{prefix}{i}",
                prompt=prompt,
                chosen=f"{a} + {b} = {a + b}. Final answer: {a + b}",
                rejected=f"{a} + {b} = {a + b + 1 + i % 3}. Final answer: {a + b + 1 + i % 3}",
                source=common_pb2.PAIR_SOURCE_CORRECTNESS,
            )
        )
    return pairs


def config_for(model: Path, root: Path, **overrides: object) -> TrainerConfig:
    values: dict[str, object] = {
        "model": model,
        "world_size": 2,
        "num_cpus_per_rank": 1,
        "learning_rate": 1e-3,
        "warmup_steps": 0,
        "total_steps": 50,
        "global_batch_pairs": 4,
        "micro_batch_pairs": 2,
        "checkpoint_dir": root / "checkpoints",
        "max_length": 256,
        "max_rank_restarts": 2,
    }
    return TrainerConfig(**(values | overrides))


@asynccontextmanager
async def running(config: TrainerConfig) -> AsyncIterator[TrainerHost]:
    host = TrainerHost(config)
    await host.start()
    try:
        yield host
    finally:
        await host.stop()


def losses(steps: Sequence[dict[str, float]], key: str = "loss") -> list[float]:
    return [step[key] for step in steps]


async def test_two_packed_ranks_match_one_padded_rank_on_the_same_global_batch(
    local_ray: None, text_model: Path, tmp_path: Path
) -> None:
    """Neither the split over ranks and micro-batches, nor packing them, nor pinning changes a number."""
    pairs = arith_pairs(8)
    runs = {}
    core = min(os.sched_getaffinity(0))
    for world_size, micro in ((1, 4), (2, 2)):
        packed_and_pinned = world_size == 2
        config = config_for(
            text_model,
            tmp_path / f"w{world_size}",
            world_size=world_size,
            micro_batch_pairs=micro,
            packing=packed_and_pinned,
            cpu_affinity=[core] if packed_and_pinned else None,
        )
        async with running(config) as host:
            runs[world_size] = (await host.train(pairs, 1, 2)).steps
            if packed_and_pinned:
                for rank in host.group.ranks:
                    assert set(thread_affinities(await actor_pid(rank)).values()) == {frozenset({core})}
    one, two = runs[1], runs[2]
    assert len(one) == len(two) == 4  # 8 pairs / 4 per step × 2 epochs
    for key in ("loss", "loss/preference", "loss/quality", "loss/generation", "reward_shift", "grad_norm", "tokens"):
        assert losses(two, key) == pytest.approx(losses(one, key), rel=1e-4, abs=1e-6), key
    # δ is the cumulative mean of mean(cat(z_c, z_r)) per micro-batch, as the foundation module computes it.
    shift = RewardShift(lambda v: v)
    for step in one:
        expected = shift.update(torch.tensor([step["rewards/chosen"]]), torch.tensor([step["rewards/rejected"]]))
        assert step["reward_shift"] == pytest.approx(expected, rel=1e-6, abs=1e-9)


async def test_loss_falls_on_a_fixed_pair_set(local_ray: None, text_model: Path, tmp_path: Path) -> None:
    async with running(config_for(text_model, tmp_path, global_batch_pairs=8, learning_rate=3e-3)) as host:
        steps = (await host.train(arith_pairs(8), 1, 12)).steps
    assert len(steps) == 12
    assert steps[-1]["loss"] < 0.7 * steps[0]["loss"], losses(steps)
    assert steps[-1]["rewards/margin"] > steps[0]["rewards/margin"]
    assert steps[-1]["rewards/accuracy"] == 1.0
    assert [s["step"] for s in steps] == list(range(1, 13))


async def test_resume_reproduces_the_loss_sequence(local_ray: None, text_model: Path, tmp_path: Path) -> None:
    config = config_for(text_model, tmp_path)
    async with running(config) as host:
        await host.train(arith_pairs(8), 1, 1)
        committed = await host.checkpoint("after-round-1")
        reference = (await host.train(arith_pairs(8, start=8), 2, 2)).steps
    assert committed.meta["step"] == 2 and committed.meta["round"] == 1
    async with running(config) as resumed:  # resume=True: picks up LATEST, not the later training
        assert resumed.state.step == 2 and resumed.state.trained == {f"p{i}" for i in range(8)}
        again = await resumed.train(arith_pairs(8, start=8) + arith_pairs(2), 2, 2)
    assert again.already_trained == 2, "pairs of the checkpoint are not trained twice"
    assert again.steps == reference, "bit-for-bit the same steps (losses, δ, learning rate, grad norms)"


async def test_a_killed_rank_is_recovered_without_losing_or_repeating_pairs(
    local_ray: None, text_model: Path, tmp_path: Path
) -> None:
    baseline_config = config_for(text_model, tmp_path / "baseline")
    async with running(baseline_config) as host:
        await host.train(arith_pairs(8), 1, 1)
        await host.checkpoint()
        await host.train(arith_pairs(8, start=8), 2, 1)
        expected = (await host.train(arith_pairs(16, start=16), 3, 25)).steps
        expected_step = host.state.step
    async with running(config_for(text_model, tmp_path / "faulty")) as host:
        await host.train(arith_pairs(8), 1, 1)
        await host.checkpoint()
        await host.train(arith_pairs(8, start=8), 2, 1)  # in the journal only: no checkpoint since
        call = asyncio.create_task(host.train(arith_pairs(16, start=16), 3, 25))  # 100 steps: a few seconds
        await asyncio.sleep(1.0)
        assert not call.done(), "the call must still be running when the rank dies"
        ray.kill(host.group.ranks[1], no_restart=True)
        outcome = await call
        assert host.restarts == 1
        assert outcome.steps == expected, "checkpoint loaded, journal replayed, call retried: the same training"
        # The host's own record survives the recovery: the journal's ids were trained, not forgotten with the
        # ranks (a lost id would be trained twice when its round is repeated).
        assert host.state.trained == {f"p{i}" for i in range(32)}
        assert host.state.step == expected_step
        assert set((await host.checkpoint()).meta["trained_pair_ids"]) == host.state.trained


async def test_published_weights_equal_the_exported_model(local_ray: None, text_model: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    async with running(config_for(text_model, tmp_path, strategy="zero3")) as host:
        await host.train(arith_pairs(8), 1, 2)
        blobs, count, _ = await host.gather_weights(2**16)
        committed = await host.checkpoint()
    gathered = {name: tensor for blob in blobs for name, tensor in load(blob).items()}
    assert len(blobs) > 1, "gathered in buckets"
    assert len(gathered) == count
    exported = export_checkpoint(committed.path, tmp_path / "exported")
    model = AutoModelForCausalLM.from_pretrained(exported)
    state = model.state_dict()
    assert set(gathered) == set(state)
    for name, tensor in state.items():
        torch.testing.assert_close(gathered[name], tensor, rtol=0, atol=0, msg=name)
    base = AutoModelForCausalLM.from_pretrained(text_model).state_dict()
    assert any(not torch.equal(base[name], state[name]) for name in state), "training changed the weights"


@pytest.mark.parametrize("strategy", ["zero1", "zero2"])
async def test_other_zero_stages_train_the_same_and_export(
    local_ray: None, text_model: Path, tmp_path: Path, strategy: str
) -> None:
    runs = {}
    for name in ("zero3", strategy):
        async with running(config_for(text_model, tmp_path / name, strategy=name)) as host:
            runs[name] = (await host.train(arith_pairs(8), 1, 1)).steps
            blobs, _, _ = await host.gather_weights(2**20)
            committed = await host.checkpoint()
    assert losses(runs[strategy]) == pytest.approx(losses(runs["zero3"]), rel=1e-4)
    gathered = {name: tensor for blob in blobs for name, tensor in load(blob).items()}
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(export_checkpoint(committed.path, tmp_path / "out")).state_dict()
    assert set(gathered) == set(exported)
    for name, tensor in exported.items():
        torch.testing.assert_close(gathered[name], tensor, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("freeze", [True, False])
async def test_image_text_model_trains(local_ray: None, image_text_model: Path, tmp_path: Path, freeze: bool) -> None:
    pairs = []
    for i, colour in enumerate(("red", "blue", "green", "white")):
        prompt = common_pb2.Prompt(
            id=f"s{i}",
            question="How many shapes?",
            task="shapes",
            answer="1",
            images=[common_pb2.Image(data=png(colour))],
        )
        pairs.append(
            common_pb2.PreferencePair(
                id=f"v{i}",
                prompt=prompt,
                chosen="One shape. Final answer: 1",
                rejected="Two. Final answer: 2",
                source=common_pb2.PAIR_SOURCE_CORRECTNESS,
            )
        )
    # Unfrozen also recomputes activations in backward (gradient checkpointing) to cover that option.
    config = config_for(
        image_text_model, tmp_path, freeze_vision_tower=freeze, gradient_checkpointing=not freeze, max_length=256
    )
    async with running(config) as host:
        steps = (await host.train(pairs, 1, 3)).steps
        blobs, _, _ = await host.gather_weights(2**20)
    assert steps[-1]["loss"] < steps[0]["loss"]
    trained = {name: tensor for blob in blobs for name, tensor in load(blob).items()}
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(image_text_model).state_dict()
    vision = [name for name in trained if "vision_tower" in name]
    language = [name for name in trained if "language_model" in name]
    assert vision and language
    assert any(not torch.equal(trained[n], base[n]) for n in language)
    vision_moved = any(not torch.equal(trained[n], base[n]) for n in vision)
    assert vision_moved is not freeze


async def test_a_pinned_core_the_host_lacks_fails_the_start_naming_the_field(
    local_ray: None, text_model: Path, tmp_path: Path
) -> None:
    absent = max(os.sched_getaffinity(0)) + 1000
    host = TrainerHost(config_for(text_model, tmp_path, cpu_affinity=[absent]))
    with pytest.raises(RankFailure, match=rf"trainer\.cpu_affinity: core\(s\) \[{absent}\] not available"):
        await host.start()
    assert host.group.ranks == [] and not host.ready


async def test_bad_pairs_are_refused_before_anything_changes(local_ray: None, text_model: Path, tmp_path: Path) -> None:
    from mpo.serving.validation import InvalidRequest

    async with running(config_for(text_model, tmp_path, max_length=200)) as host:
        with_image = arith_pairs(2)
        with_image[1].prompt.images.append(common_pb2.Image(data=png("red")))
        with pytest.raises(InvalidRequest) as refused:
            await host.train(with_image, 1, 1)
        assert refused.value.field == "pairs[1].prompt.images" and "text-only" in refused.value.reason
        long_prompt = arith_pairs(1)
        long_prompt[0].prompt.question = "What is " + " + ".join(["1"] * 200) + "?"
        with pytest.raises(InvalidRequest) as refused:
            await host.train(long_prompt, 1, 1)
        assert refused.value.field == "pairs[0].prompt" and "max_length" in refused.value.reason
        assert host.state.step == 0 and not host.state.trained, "nothing changed"
        long_answer = arith_pairs(2)
        long_answer[0].chosen = "1 + 1 = 2. " * 40 + "Final answer: 2"
        outcome = await host.train(long_answer, 1, 1)
        assert outcome.truncated == 1 and len(outcome.steps) == 1
