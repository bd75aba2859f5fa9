"""`TrainerService` over gRPC with a real vLLM rollout service: train, publish by both transports, export
(`mpo export`, a subprocess), and the statuses of bad requests."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
import ray

from mpo.config import RolloutConfig, TrainerConfig
from mpo.models.tiny import build_text_model
from mpo.pairs import referring
from mpo.services.rollout.server import RunningRollout, start_rollout
from mpo.serving.clients import RolloutClient, TrainerClient
from mpo.trainer.service import RunningTrainer, start_trainer
from mpo.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc
from tests.rollout_helpers import CORPUS, SMALL, arith_prompt, png, transformers_greedy
from tests.test_trainer_deepspeed import arith_pairs, config_for

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

QUESTION = "What is 12 + 7?"
GREEDY = common_pb2.SamplingParams(n=1, temperature=0.0, max_tokens=24)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("trainer-service")


@pytest.fixture(scope="module")
def text_model(root: Path) -> Path:
    return build_text_model(root / "model", CORPUS, SMALL, seed=0)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def services(root: Path, text_model: Path) -> AsyncIterator[tuple[RunningRollout, RunningTrainer]]:
    ray.init(num_cpus=8, include_dashboard=False, namespace="mpo-trainer-service-tests", log_to_driver=False)
    rollout = await start_rollout(
        RolloutConfig(
            model=text_model, backend="vllm", replicas=1, num_cpus_per_replica=1, dtype="float32",
            enforce_eager=True, max_model_len=256, kv_cache_bytes=16 * 2**20, weights_dir=root / "ledger",
            readable_roots=[root / "publish"],
        )
    )  # fmt: skip
    base: TrainerConfig = config_for(text_model, root)
    trainer = await start_trainer(
        base.model_copy(update={"rollout_address": rollout.address, "publish_dir": root / "publish"})
    )
    yield rollout, trainer
    await trainer.stop(0)
    await rollout.stop(0)
    ray.shutdown()


@pytest_asyncio.fixture(loop_scope="module")
async def stub(services: tuple[RunningRollout, RunningTrainer]) -> AsyncIterator[trainer_pb2_grpc.TrainerServiceStub]:
    channel = grpc.aio.insecure_channel(services[1].address, options=[("grpc.enable_retries", 0)])
    yield trainer_pb2_grpc.TrainerServiceStub(channel)
    await channel.close()


async def expect(call: object, code: grpc.StatusCode, fragment: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call  # type: ignore[misc]
    assert error.value.code() == code, error.value.details()
    assert fragment in (error.value.details() or ""), error.value.details()


async def test_bad_requests_get_precise_statuses_and_change_nothing(
    stub: trainer_pb2_grpc.TrainerServiceStub,
) -> None:
    before = await stub.GetStatus(trainer_pb2.TrainerServiceGetStatusRequest())
    empty = arith_pairs(1)
    empty[0].rejected = ""
    await expect(
        stub.Train(trainer_pb2.TrainRequest(pairs=empty)), grpc.StatusCode.INVALID_ARGUMENT, "pairs[0].rejected"
    )
    with_image = arith_pairs(2)
    with_image[1].prompt.images.append(common_pb2.Image(data=png("red")))
    await expect(
        stub.Train(trainer_pb2.TrainRequest(pairs=with_image)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "pairs[1].prompt.images",
    )
    # Pairs naming their prompt by id: every broken reference is refused, naming the field.
    prompts, named = referring(arith_pairs(2))
    both, neither = arith_pairs(2)[1], common_pb2.PreferencePair()
    both.prompt_id = prompts[1].id
    neither.CopyFrom(named[1])
    neither.ClearField("prompt_id")
    for pairs, sent, field in [
        ([named[0], both], prompts, "pairs[1].prompt_id"),  # prompt and prompt_id
        ([named[0], neither], prompts[:1], "pairs[1].prompt"),  # neither
        (named, prompts[:1], "pairs[1].prompt_id"),  # an id not in prompts
        (named, [prompts[0], prompts[0]], "prompts[1].id"),  # a prompt id twice
        (named[:1], prompts, "prompts"),  # more prompts than pairs
        ([named[0], arith_pairs(1, start=5)[0]], prompts, "prompts[1]"),  # a prompt no pair names
    ]:
        request = trainer_pb2.TrainRequest(pairs=pairs, prompts=sent)
        await expect(stub.Train(request), grpc.StatusCode.INVALID_ARGUMENT, f"{field}:")
    await expect(
        stub.PublishWeights(trainer_pb2.PublishWeightsRequest(version=1)), grpc.StatusCode.INVALID_ARGUMENT, "transport"
    )
    await expect(
        stub.PublishWeights(
            trainer_pb2.PublishWeightsRequest(version=1, transport=trainer_pb2.WEIGHT_TRANSPORT_GPU_DIRECT)
        ),
        grpc.StatusCode.UNIMPLEMENTED,
        "GPU_DIRECT",
    )
    after = await stub.GetStatus(trainer_pb2.TrainerServiceGetStatusRequest())
    assert after == before and after.ready and after.world_size == 2 and after.strategy == "zero3"


async def test_train_publish_and_export_give_the_same_greedy_output(
    services: tuple[RunningRollout, RunningTrainer], root: Path, text_model: Path
) -> None:
    rollout, trainer = services
    async with TrainerClient(trainer.address, timeout=600) as client, RolloutClient(rollout.address) as sampler:
        before = list((await sampler.generate([arith_prompt(QUESTION)], GREEDY)).samples[0].token_ids)
        trained = await client.train(arith_pairs(8), round=1)
        assert len(trained.steps) == 2 and trained.mean.step == 2 and trained.mean.tokens > 0
        assert trained.steps[0].learning_rate > 0 and trained.steps[1].reward_shift != 0
        again = await client.train(arith_pairs(8), round=1)
        assert again.pairs_already_trained == 8 and not again.steps
        for version, transport in (
            (1, trainer_pb2.WEIGHT_TRANSPORT_GRPC_STREAM),
            (2, trainer_pb2.WEIGHT_TRANSPORT_SHARED_STORAGE),
            (3, trainer_pb2.WEIGHT_TRANSPORT_SHARED_STORAGE),
        ):
            published = await client.publish_weights(version, transport)
            assert published.policy_version == version and published.replicas_loaded == 1 and published.bytes > 0
            sample = (await sampler.generate([arith_prompt(QUESTION)], GREEDY)).samples[0]
            assert sample.policy_version == version
        # The rollout's ledger holds what it serves: the trainer keeps only the newest published copy.
        assert [p.name for p in (root / "publish").iterdir()] == ["v000000003"]
        await expect(
            client.publish_weights(3, trainer_pb2.WEIGHT_TRANSPORT_GRPC_STREAM),
            grpc.StatusCode.FAILED_PRECONDITION,
            "version",
        )
        checkpoint = await client.checkpoint("after-round-1")
        status = await client.status()
    assert (checkpoint.step, checkpoint.round, status.policy_version) == (2, 1, 3)
    exported = root / "exported"
    result = subprocess.run(
        [sys.executable, "-m", "mpo.cli", "export", "--checkpoint", checkpoint.path, "--out", str(exported)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["model_dir"] == str(exported)
    served = list(sample.token_ids)
    assert served == transformers_greedy(exported, QUESTION, GREEDY.max_tokens), "rollout serves the exported weights"
    assert before == transformers_greedy(text_model, QUESTION, GREEDY.max_tokens), "version 0 was the base"


async def test_pairs_naming_their_prompt_train_beside_legacy_pairs_carrying_it(
    services: tuple[RunningRollout, RunningTrainer],
) -> None:
    prompts, named = referring(arith_pairs(4, start=40, prefix="named"))
    legacy = arith_pairs(4, start=50, prefix="legacy")
    async with TrainerClient(services[1].address, timeout=600) as client:
        trained = await client.train([*named, *legacy], prompts=prompts, round=2)
        again = await client.train(named, prompts=prompts, round=2)
    assert len(trained.steps) == 2 and trained.pairs_already_trained == 0
    assert all(math.isfinite(step.loss) for step in trained.steps)
    assert again.pairs_already_trained == 4 and not again.steps
