"""Hostile clients against the real services on loopback: every attack gets its documented status,
the attacked service's memory stays bounded, and a normal call right after it succeeds.

One set of services serves the whole module (started once: an image-text rollout on the transformers
backend, a reward service in front of it and a controller), with both tokens on, as in a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import pytest
import pytest_asyncio
import ray
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mpo import failpoints
from mpo.config import (
    AuthConfig,
    ControllerConfig,
    DashboardConfig,
    RequestLimits,
    RewardConfig,
    RolloutConfig,
    ServerConfig,
)
from mpo.models.tiny import build_image_text_model
from mpo.services.common.auth import bearer_metadata
from mpo.services.controller.service import RunningController, start_controller
from mpo.services.reward.service import RunningReward, start_reward
from mpo.services.rollout.server import RunningRollout, start_rollout
from mpo.v1 import common_pb2, controller_pb2, controller_pb2_grpc, reward_pb2_grpc, rollout_pb2, rollout_pb2_grpc
from tests.rollout_helpers import CORPUS, SMALL, VISION, png

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

CONTROL_TOKEN = "control-token-for-tests"
USER_TOKEN = "user-token-for-tests"
CONTROL = bearer_metadata(CONTROL_TOKEN)
USER = bearer_metadata(USER_TOKEN)
#: Tight enough that an attack that got through would show, loose enough for allocator noise.
RSS_GROWTH_BOUND = 512 * 2**20
LIMITS = RequestLimits(max_image_pixels=1024 * 1024, max_tokens=64, max_batch_prompts=8)


@dataclass
class Services:
    rollout: RunningRollout
    reward: RunningReward
    controller: RunningController
    root: Path
    images: Path
    data: Path
    failpoints: Path


def rss() -> int:
    """Resident memory of this process: the rollout and reward ingresses (and their request handling) run
    here, in the test's event loop."""
    return psutil.Process().memory_info().rss


def server(**overrides) -> ServerConfig:
    return ServerConfig(limits=LIMITS, auth=AuthConfig(), **overrides)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def services(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Services]:
    root = tmp_path_factory.mktemp("hostile")
    images, data = root / "images", root / "data"
    images.mkdir()
    data.mkdir()
    (images / "red.png").write_bytes(png("red"))
    armed = root / "failpoints"
    armed.write_text("")
    saved = {name: os.environ.get(name) for name in ("MPO_CONTROL_TOKEN", "MPO_USER_TOKEN", failpoints.ENV)}
    # Before ray.init: the replica and worker processes inherit the environment of the Ray it starts.
    os.environ.update({"MPO_CONTROL_TOKEN": CONTROL_TOKEN, "MPO_USER_TOKEN": USER_TOKEN, failpoints.ENV: str(armed)})
    ray.init(num_cpus=8, include_dashboard=False, namespace="mpo-hostile-tests", log_to_driver=False)
    vl_model = build_image_text_model(root / "vl", CORPUS, SMALL, VISION, seed=0)
    rollout = await start_rollout(
        RolloutConfig(
            model=vl_model,
            weights_dir=root / "ledger",
            readable_roots=[images],
            max_model_len=512,
            weight_stream_idle_seconds=2.0,
            server=server(),
        )
    )
    reward = await start_reward(RewardConfig(workers=1, rollout_address=rollout.address, server=server()))
    controller = await start_controller(
        ControllerConfig(server=server(), dashboard=DashboardConfig(enabled=False), data_roots=[data]),
        root / "store",
        rollout=rollout.address,
        reward=reward.address,
        trainer="127.0.0.1:1",  # never reached: the attacks on the controller end before any round starts
    )
    yield Services(rollout, reward, controller, root, images, data, armed)
    await controller.stop(0)
    await reward.stop(0)
    await rollout.stop(0)
    ray.shutdown()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def channel(address: str) -> grpc.aio.Channel:
    """No retries: each test observes the status exactly as the server sent it."""
    return grpc.aio.insecure_channel(address, options=[("grpc.enable_retries", 0)])


def rollout_stub(services: Services) -> tuple[grpc.aio.Channel, rollout_pb2_grpc.RolloutServiceStub]:
    opened = channel(services.rollout.address)
    return opened, rollout_pb2_grpc.RolloutServiceStub(opened)


def reward_stub(services: Services) -> tuple[grpc.aio.Channel, reward_pb2_grpc.RewardServiceStub]:
    opened = channel(services.reward.address)
    return opened, reward_pb2_grpc.RewardServiceStub(opened)


def controller_stub(services: Services) -> tuple[grpc.aio.Channel, controller_pb2_grpc.ControllerServiceStub]:
    opened = channel(services.controller.address)
    return opened, controller_pb2_grpc.ControllerServiceStub(opened)


def shapes_prompt(*images: common_pb2.Image, prompt_id: str = "v0") -> common_pb2.Prompt:
    return common_pb2.Prompt(id=prompt_id, question="How many shapes are there?", task="shapes", images=images)


async def assert_generate_works(services: Services) -> None:
    """The normal call every attack is followed by: a user's greedy sample with an image."""
    opened, stub = rollout_stub(services)
    async with opened:
        reply = await stub.Generate(
            generate_request(shapes_prompt(common_pb2.Image(data=png("blue")))), metadata=USER, timeout=120
        )
    assert len(reply.samples) == 1 and reply.samples[0].token_ids


def generate_request(*prompts: common_pb2.Prompt, max_tokens: int = 8) -> rollout_pb2.GenerateRequest:
    return rollout_pb2.GenerateRequest(
        prompts=prompts, sampling=common_pb2.SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens)
    )


# --- auth, budgets, bodies (lead) ---------------------------------------------------------------------------


async def test_idle_unauthenticated_health_streams_never_starve_real_calls(services: Services) -> None:
    """80 idle Health/Watch streams without a token used to take every slot of max_concurrent_rpcs."""
    opened = channel(services.rollout.address)
    async with opened:
        health = health_pb2_grpc.HealthStub(opened)
        watches = [health.Watch(health_pb2.HealthCheckRequest()) for _ in range(80)]
        statuses = await asyncio.gather(*(_first_status(watch) for watch in watches))
        budget = services.rollout.server.config.max_infrastructure_calls
        assert statuses.count(grpc.StatusCode.OK) == budget
        assert statuses.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 80 - budget
        await assert_generate_works(services)  # while the admitted watches are still open
        for watch in watches:
            watch.cancel()


async def _first_status(watch: grpc.aio.UnaryStreamCall) -> grpc.StatusCode:
    """OK once the stream delivered its first health status (it then stays open), else its error code."""
    try:
        await watch.read()
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


#: Sends one Generate of ~BODY_BYTES with a wrong token from another process (its own memory is not ours).
_LARGE_BODY_CLIENT = """
import sys, grpc
from mpo.v1 import common_pb2, rollout_pb2, rollout_pb2_grpc
size = int(sys.argv[2])
prompt = common_pb2.Prompt(id="big", question="x" * size, task="shapes")
request = rollout_pb2.GenerateRequest(prompts=[prompt], sampling=common_pb2.SamplingParams(n=1, max_tokens=4))
options = [("grpc.max_send_message_length", 2 * size), ("grpc.enable_retries", 0)]
with grpc.insecure_channel(sys.argv[1], options=options) as channel:
    try:
        rollout_pb2_grpc.RolloutServiceStub(channel).Generate(
            request, metadata=(("authorization", "Bearer " + sys.argv[3]),), timeout=120
        )
        print("OK")
    except grpc.RpcError as error:
        print(error.code().name)
"""


@pytest.mark.parametrize("token", ["not-a-token", ""], ids=["wrong-token", "no-token"])
async def test_large_unauthenticated_bodies_are_refused_before_they_are_read(services: Services, token: str) -> None:
    body = 200 * 2**20  # below max_message_bytes (256 MiB): only auth stands in its way
    before = rss()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _LARGE_BODY_CLIENT, services.rollout.address, str(body), token,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    peak = before
    while process.returncode is None:  # sample while the body is in flight: a parsed copy would show
        peak = max(peak, rss())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 0.05)
    output = (await process.stdout.read()).decode().split()  # type: ignore[union-attr]
    assert output == ["UNAUTHENTICATED"]
    assert peak - before < body // 4, f"the server grew by {(peak - before) >> 20} MiB for a refused body"
    await assert_generate_works(services)


async def test_the_user_token_samples_and_reads_but_changes_nothing(services: Services) -> None:
    opened, stub = rollout_stub(services)
    async with opened:
        status = await stub.GetStatus(rollout_pb2.GetStatusRequest(), metadata=USER)
        manifest = rollout_pb2.WeightManifest(
            version=status.policy_version + 1, tensor_count=1, total_bytes=1, sha256="0" * 64, format="safetensors"
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.LoadWeights(iter([rollout_pb2.LoadWeightsRequest(manifest=manifest)]), metadata=USER)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert (await stub.GetStatus(rollout_pb2.GetStatusRequest(), metadata=USER)).policy_version == (
            status.policy_version
        )
    opened, controller = controller_stub(services)
    async with opened:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await controller.StartRun(controller_pb2.StartRunRequest(config_yaml="rounds: {rounds: 1}"), metadata=USER)
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        listed = await controller.ListRuns(controller_pb2.ListRunsRequest(), metadata=USER)
        assert list(listed.runs) == []


# --- rollout requests: images, URIs, sampling (helper R1) ----------------------------------------------------


# --- weights: size, idle streams, versions, failed reloads (helper R2) ----------------------------------------


# --- reward and controller: BuildPairs, run ids, data paths (helper C) ----------------------------------------
