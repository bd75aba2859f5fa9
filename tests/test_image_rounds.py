"""Online rounds on the image-text policy over the real services, sync and async: transformers rollout of
a LLaVA-style model, reward workers building correctness pairs (`shapes`) and DropoutNTP pairs
(`describe`), 2 DeepSpeed ZeRO-3 ranks, publishing, and a held-out evaluation that measures accuracy,
degenerate answers and hallucination in the descriptions.

The policy is warm-started for ~15 s on multiple-choice shapes demonstrations and describe reference
descriptions, so its shapes answers are sometimes right and its descriptions name shapes and colours,
right or wrong.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
import ray

from mpo.config import AuthConfig, BootstrapConfig, RewardConfig, RolloutConfig, RoundsConfig
from mpo.data.records import PromptRecord
from mpo.data.tasks import TASKS, make_splits
from mpo.grading.hallucination import judge_description, scene_objects, summarize
from mpo.models.tiny import TextModelSpec, VisionSpec, build_image_text_model
from mpo.services.controller.loop import RoundLoop, to_prompt
from mpo.services.controller.retry import ServiceClients
from mpo.services.controller.store import RunStore
from mpo.services.reward.service import start_reward
from mpo.services.rollout.server import start_rollout
from mpo.trainer.service import start_trainer
from mpo.trainer.sft import bootstrap
from mpo.v1 import common_pb2, controller_pb2
from tests.test_trainer_deepspeed import config_for

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

ROUNDS = dict(prompts_per_round=12, samples_per_prompt=6, max_tokens=64, eval_prompts=16, epochs=1)


@dataclass
class ImageRounds:
    clients: ServiceClients
    train: list[PromptRecord]
    heldout: list[PromptRecord]


def interleave(*splits: list[PromptRecord]) -> list[PromptRecord]:
    return [record for group in zip(*splits, strict=True) for record in group]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rounds(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[ImageRounds]:
    root = tmp_path_factory.mktemp("image-rounds")
    # Multiple-choice shapes questions only: once the answer format is learned, samples at temperature 1
    # pick different options, so correctness pairs form after seconds of warm-up (counting takes minutes).
    generated = make_splits("shapes", seed=0, train=300, heldout=40, out_dir=root / "shapes")
    sizes = {"train": 120, "heldout": 8}
    shapes = {split: [r for r in generated[split] if r.choices][:size] for split, size in sizes.items()}
    describe = make_splits("describe", seed=0, train=120, heldout=8, out_dir=root / "describe")
    train = interleave(shapes["train"], describe["train"])
    heldout = interleave(shapes["heldout"], describe["heldout"])  # 8 of each within eval_prompts

    def demonstrate(record: PromptRecord, rng: random.Random) -> str | None:
        return TASKS[record.task].demonstration(record, rng)  # describe: a reference description

    corpus = [r.question for r in train] + [demonstrate(r, random.Random(0)) or "" for r in train]
    spec = TextModelSpec(
        vocab_size=400, hidden_size=64, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=128
    )
    model = build_image_text_model(root / "vl", corpus, spec, VisionSpec(num_layers=1), seed=0)
    warm = BootstrapConfig(
        steps=150, batch_size=16, learning_rate=5e-3, warmup_steps=5, eval_every=1000, eval_prompts=4,
        stability_steps=0, pass_k=1, max_new_tokens=8, ema_decay=0.0,
    )  # fmt: skip
    bootstrap(model, root / "base", train, shapes["heldout"], demonstrate, warm, progress=False)
    policy = root / "base"

    ray.init(num_cpus=8, include_dashboard=False, namespace="mpo-image-round-tests", log_to_driver=False)
    rollout = await start_rollout(RolloutConfig(model=policy, weights_dir=root / "ledger", max_model_len=512))
    reward = await start_reward(RewardConfig(workers=1, rollout_address=rollout.address))
    trainer = await start_trainer(
        config_for(policy, root, rollout_address=rollout.address, global_batch_pairs=8, micro_batch_pairs=4)
    )
    addresses = {"rollout": rollout.address, "reward": reward.address, "trainer": trainer.address}
    clients = ServiceClients.connect(addresses, AuthConfig())
    yield ImageRounds(clients, train, heldout)
    await clients.close()
    await trainer.stop(0)
    await reward.stop(0)
    await rollout.stop(0)
    ray.shutdown()


async def recomputed_hallucination(rounds: ImageRounds, config: RoundsConfig) -> common_pb2.Hallucination:
    """What the serving policy's greedy descriptions of the held-out scenes score, judged here."""
    described = [r for r in rounds.heldout if r.task == "describe"]
    greedy = common_pb2.SamplingParams(n=1, temperature=0.0, max_tokens=config.heldout_max_tokens)
    samples = (await rounds.clients.rollout.generate([to_prompt(r) for r in described], greedy)).samples
    texts = {s.prompt_id: s.text for s in samples}
    summary = summarize(judge_description(scene_objects(r.meta["scene"]), texts[r.id]) for r in described)
    return common_pb2.Hallucination(
        rate=summary.rate, mentions=summary.mentions, recall=summary.recall, descriptions=summary.descriptions
    )


def assert_evaluated(record: common_pb2.RoundMetrics | controller_pb2.Run, prefix: str = "eval_") -> None:
    accuracy = getattr(record, f"{prefix}accuracy")
    assert set(accuracy) == {"shapes"}, "describe has no ground truth: no accuracy"
    assert set(getattr(record, f"{prefix}degenerate")) == {"shapes", "describe"}
    hallucination = getattr(record, f"{prefix}hallucination")
    assert set(hallucination) == {"describe"} and hallucination["describe"].descriptions == 8
    described = hallucination["describe"]
    assert described.rate > 0 or described.recall > 0, "the warm-started policy's descriptions name shapes"


async def test_a_sync_image_round_trains_on_both_pair_sources_and_measures_hallucination(
    rounds: ImageRounds, tmp_path: Path
) -> None:
    store = RunStore(tmp_path / "store")
    store.put_run(controller_pb2.Run(run_id="sync", state=controller_pb2.RUN_STATE_RUNNING))
    config = RoundsConfig(rounds=1, seed=1, **ROUNDS)
    before = (await rounds.clients.rollout.status()).policy_version
    [record] = await RoundLoop("sync", config, store, rounds.clients, rounds.train, rounds.heldout).run()

    labels = record.labels
    assert labels.pairs_correctness > 0, f"the warm-started policy is right on some samples, wrong on others: {labels}"
    assert labels.pairs_dropout_ntp > 0, "every describe answer long enough to split makes a DropoutNTP pair"
    pairs = store.committed_pairs("sync", 1)
    assert {p.source for p in pairs} == {common_pb2.PAIR_SOURCE_CORRECTNESS, common_pb2.PAIR_SOURCE_DROPOUT_NTP}
    assert all(len(p.prompt.images) == 1 for p in pairs), "image prompts keep their image in the stored pairs"
    assert record.train_steps > 0 and record.trained_policy_version == before + 1
    assert (await rounds.clients.rollout.status()).policy_version == before + 1

    run = store.get_run("sync")
    assert run is not None
    assert_evaluated(run, "base_eval_")
    assert_evaluated(record)
    # The stored figures are the served policy's: its greedy descriptions, judged here, score the same.
    assert record.eval_hallucination["describe"] == await recomputed_hallucination(rounds, config)


async def test_async_image_rounds_overlap_and_evaluate_each_round(rounds: ImageRounds, tmp_path: Path) -> None:
    store = RunStore(tmp_path / "store")
    store.put_run(controller_pb2.Run(run_id="async", state=controller_pb2.RUN_STATE_RUNNING))
    config = RoundsConfig(rounds=2, seed=2, mode="async", max_staleness=1, **ROUNDS)
    before = (await rounds.clients.rollout.status()).policy_version
    records = await RoundLoop("async", config, store, rounds.clients, rounds.train, rounds.heldout).run()

    assert [r.round for r in records] == [1, 2]
    assert sum(r.labels.pairs_correctness for r in records) > 0, [r.labels for r in records]
    assert all(r.labels.pairs_dropout_ntp > 0 for r in records)
    assert [r.trained_policy_version for r in records] == [before + 1, before + 2]
    assert all(r.staleness_max <= 1 for r in records)
    # Round 2 may be sampled while round 1 trains: from the weights before round 1's publish or after it.
    assert records[1].rollout_policy_version in (before, before + 1)
    for record in records:
        assert_evaluated(record)
    assert records[-1].eval_hallucination["describe"] == await recomputed_hallucination(rounds, config)
