"""Hostile clients against the real services on loopback: every attack gets its documented status,
the attacked service's memory stays bounded, and a normal call right after it succeeds.

One set of services serves the whole module (started once: an image-text rollout on the transformers
backend, a reward service in front of it and a controller), with both tokens on, as in a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import psutil
import pytest
import pytest_asyncio
import ray
import torch
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from ray.exceptions import RayTaskError
from transformers import AutoModelForImageTextToText

from mpo import failpoints
from mpo.chat import ChatRenderer
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
from mpo.services.controller.service import RunningController, start_controller
from mpo.services.reward.service import RunningReward, start_reward
from mpo.services.rollout.engines.base import SamplingSpec
from mpo.services.rollout.engines.transformers_engine import TransformersEngine
from mpo.services.rollout.engines.vllm_engine import _refusals
from mpo.services.rollout.pool import ReplicaUnavailable
from mpo.services.rollout.server import RunningRollout, start_rollout
from mpo.services.rollout.service import RolloutService
from mpo.serving.auth import bearer_metadata
from mpo.v1 import (
    common_pb2,
    controller_pb2,
    controller_pb2_grpc,
    reward_pb2,
    reward_pb2_grpc,
    rollout_pb2,
    rollout_pb2_grpc,
)
from mpo.weights import FAILPOINT_AFTER_FIRST_TENSOR, WeightLedger, iter_tensors, pack
from tests.process_helpers import actor_pid
from tests.rollout_helpers import CORPUS, SMALL, VISION, png
from tests.test_validation import BOMB_PNG

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


class PeakRss:
    """The growth of this process's RSS to its highest point inside the block, sampled from a thread: a
    decode on the event loop cannot hide from it, and memory freed again by the end still counts."""

    def __enter__(self) -> PeakRss:
        self.before = self.peak = rss()
        self._done = threading.Event()
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(0.005):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._sampler.join()
        self.peak = max(self.peak, rss())

    @property
    def growth(self) -> int:
        return self.peak - self.before


async def refused(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def test_image_bomb_is_refused_before_it_is_decoded(services: Services) -> None:
    """Four 97-byte PNGs declaring 13,000 x 13,000 pixels: about 2 GB once decoded, in this process."""
    opened, stub = rollout_stub(services)
    async with opened:
        with PeakRss() as memory:
            error = await refused(
                stub.Generate(generate_request(shapes_prompt(*[common_pb2.Image(data=BOMB_PNG)] * 4)), metadata=USER)
            )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("prompts[0].images[0].data: image of 13000x13000 = 169000000 pixels")
    assert memory.growth < RSS_GROWTH_BOUND, f"the ingress grew by {memory.growth >> 20} MiB"
    await assert_generate_works(services)


async def test_deeply_nested_prompt_meta_is_refused_and_the_service_keeps_serving(services: Services) -> None:
    """60 KB of nested arrays in `meta_json`, within its byte bound: a recursive parser or walker would run
    out of stack; the service refuses it with the field and keeps serving."""
    bomb = shapes_prompt(common_pb2.Image(data=png("red")))
    bomb.meta_json = '{"scene":' + "[" * 30_000 + "]" * 30_000 + "}"
    opened, stub = rollout_stub(services)
    async with opened:
        error = await refused(stub.Generate(generate_request(bomb), metadata=USER))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "prompts[0].meta_json: nested more than 32 deep"
    await assert_generate_works(services)


async def test_image_file_over_the_byte_cap_is_refused_unread(services: Services) -> None:
    """A real PNG padded past max_image_bytes: PIL would take it, the cap must not."""
    limit = services.rollout.service.config.server.limits.max_image_bytes
    padded = png("green")
    (services.images / "padded.png").write_bytes(padded + bytes(limit + 1 - len(padded)))
    opened, stub = rollout_stub(services)
    async with opened:
        uri = f"file://{services.images / 'padded.png'}"
        error = await refused(stub.Generate(generate_request(shapes_prompt(common_pb2.Image(uri=uri))), metadata=USER))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    reason = f"file of {limit + 1} bytes, at most {limit} bytes (max_image_bytes)"
    assert error.details() == f"prompts[0].images[0].uri: {reason}"
    await assert_generate_works(services)


async def test_uris_outside_the_roots_and_missing_ones_get_one_answer(services: Services) -> None:
    """Otherwise a caller could map which paths exist on the server."""
    (services.root / "outside.png").write_bytes(png("red"))
    uris = [
        services.root / "outside.png",  # exists, outside the roots
        services.root / "missing.png",  # missing, outside the roots
        services.images / "missing.png",  # missing, inside
        services.images,  # a folder, inside
    ]
    opened, stub = rollout_stub(services)
    async with opened:
        requests = [generate_request(shapes_prompt(common_pb2.Image(uri=str(uri)))) for uri in uris]
        errors = [await refused(stub.Generate(request, metadata=USER)) for request in requests]
    assert {error.code() for error in errors} == {grpc.StatusCode.INVALID_ARGUMENT}
    assert {error.details() for error in errors} == {
        "prompts[0].images[0].uri: not a readable file under the readable roots"
    }


async def test_several_greedy_samples_are_invalid_argument(services: Services) -> None:
    request = generate_request(shapes_prompt(common_pb2.Image(data=png("red"))))
    request.sampling.n = 2
    opened, stub = rollout_stub(services)
    async with opened:
        error = await refused(stub.Generate(request, metadata=USER))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("sampling.n: must be 1 with greedy decoding")


def long_prompt(services: Services, room: int) -> tuple[common_pb2.Prompt, int]:
    """A prompt that leaves at most `room` tokens of the context (at least one), and how many exactly."""
    renderer = services.rollout.service.renderer
    prompt = shapes_prompt(common_pb2.Image(data=png("red")))

    def left(repeats: int) -> int:
        prompt.question = "How many shapes are there? " * repeats
        return renderer.max_model_len - len(renderer.render(prompt, "p", max_tokens=0).prompt_token_ids)

    repeats = max(1, (left(1) - room) // (left(1) - left(2)))
    while left(repeats) > room:
        repeats += 1
    return prompt, left(repeats)


async def test_unset_max_tokens_samples_what_the_context_leaves(services: Services) -> None:
    limit = services.rollout.service.config.server.limits.max_tokens
    prompt, left = long_prompt(services, room=limit // 2)
    short = shapes_prompt(common_pb2.Image(data=png("blue")), prompt_id="short")
    request = generate_request(prompt, short, max_tokens=0)
    request.sampling.temperature, request.sampling.n = 1.0, 2
    opened, stub = rollout_stub(services)
    async with opened:
        reply = await stub.Generate(request, metadata=USER, timeout=120)
        assert len(reply.samples) == 4
        for sample in reply.samples:  # the longest prompt of the request bounds every sample
            assert 1 <= len(sample.token_ids) <= left
        prompt.question += " How many shapes are there?" * 40
        error = await refused(stub.Generate(generate_request(short, prompt, max_tokens=0), metadata=USER))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("prompts[1]: ") and "leaves no room for an answer" in error.details()


async def test_too_many_stop_strings_a_long_prefix_and_a_floor_past_its_bound_are_refused(services: Services) -> None:
    """A continuation's floor above its own bound is INVALID_ARGUMENT; the largest floor without a bound is
    held to `sampling.max_tokens`, like every continuation, and costs no more."""
    limits = services.rollout.service.config.server.limits
    prompt = shapes_prompt(common_pb2.Image(data=png("red")))
    many_stops = generate_request(prompt)
    many_stops.sampling.stop.extend(f"stop-{i}" for i in range(limits.max_stop_strings + 1))
    long_prefix = rollout_pb2.ContinueRequest(
        continuations=[rollout_pb2.Continuation(prompt=prompt, prefix="I count " * limits.max_prefix_chars)],
        sampling=common_pb2.SamplingParams(n=1, temperature=1.0, max_tokens=4),
    )
    opened, stub = rollout_stub(services)
    async with opened:
        stops_error = await refused(stub.Generate(many_stops, metadata=USER))
        prefix_error = await refused(stub.Continue(long_prefix, metadata=USER))
        long_prefix.continuations[0].prefix = "I count"
        long_prefix.continuations[0].min_total_tokens, long_prefix.continuations[0].max_total_tokens = 9, 8
        floor_error = await refused(stub.Continue(long_prefix, metadata=USER))
        long_prefix.continuations[0].min_total_tokens, long_prefix.continuations[0].max_total_tokens = 2**32 - 1, 0
        (held,) = (await stub.Continue(long_prefix, metadata=USER, timeout=120)).samples
    assert (len(held.token_ids), held.finish_reason) == (4, common_pb2.FINISH_REASON_LENGTH)
    assert floor_error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert floor_error.details() == "continuations[0].min_total_tokens: must be at most max_total_tokens (8), got 9"
    assert stops_error.code() == prefix_error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert stops_error.details().startswith("sampling.stop: at most 16 allowed (max_stop_strings)")
    assert prefix_error.details().startswith("continuations[0].prefix: at most 32768 characters (max_prefix_chars)")
    await assert_generate_works(services)


class _Aborted(Exception):
    """What the fake context's `abort` raises: (code, details)."""


class _Context:
    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Aborted(code, details)


def _from_replica(cause: Exception) -> RayTaskError:
    """An exception as a Ray actor call raises it: a RayTaskError that is also an instance of the cause."""
    return RayTaskError("RolloutReplica.generate", "Traceback ...", cause).as_instanceof_cause()


@pytest.mark.parametrize(
    ("error", "code", "details"),
    [
        (
            _from_replica(ValueError("n must be 1 when using greedy sampling, got 2.")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "the engine refused the request: ValueError: n must be 1 when using greedy sampling, got 2.",
        ),
        (
            _from_replica(TypeError("unexpected image mode")),
            grpc.StatusCode.INVALID_ARGUMENT,
            "the engine refused the request: TypeError: unexpected image mode",
        ),
        (
            _from_replica(RuntimeError("CUDA error: an illegal memory access")),
            grpc.StatusCode.UNAVAILABLE,
            "the engine failed (RuntimeError: CUDA error: an illegal memory access); retry",
        ),
        (
            ReplicaUnavailable("replica 0 went away mid-call (ActorDiedError); retry"),
            grpc.StatusCode.UNAVAILABLE,
            "replica 0 went away mid-call (ActorDiedError); retry",
        ),
    ],
    ids=["value-error", "type-error", "engine-failure", "replica-gone"],
)
async def test_engine_errors_never_surface_as_internal(error: Exception, code: grpc.StatusCode, details: str) -> None:
    """The one mapping every sampling call goes through (no services needed: a fake context)."""
    service = object.__new__(RolloutService)  # `_sampling` reads no state
    with pytest.raises(_Aborted) as caught:
        async with service._sampling(_Context()):
            raise error
    assert caught.value.args == (code, details)


async def test_vllm_refusals_become_value_errors() -> None:
    """vLLM's VLLMValidationError is no ValueError, and input errors come wrapped in EngineGenerateError."""
    from vllm.exceptions import VLLMValidationError
    from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError

    with pytest.raises(ValueError, match="temperature must be in"), _refusals():
        raise VLLMValidationError("temperature must be in [0, 2], got 3.0.")
    with pytest.raises(ValueError, match="smallest side"), _refusals():
        raise EngineGenerateError() from ValueError("the image's smallest side is below 28")
    for failure in (EngineGenerateError(), EngineDeadError()):
        with pytest.raises(type(failure)), _refusals():
            raise failure from RuntimeError("out of memory")


# --- weights: size, idle streams, versions, failed reloads (helper R2) ----------------------------------------


LOAD_WEIGHTS = "/mpo.v1.RolloutService/LoadWeights"


async def serving_version(stub: rollout_pb2_grpc.RolloutServiceStub) -> int:
    return (await stub.GetStatus(rollout_pb2.GetStatusRequest(), metadata=CONTROL)).policy_version


def ledger_version(services: Services) -> int:
    committed = WeightLedger(services.rollout.service.config.weights_dir).current()
    return committed.version if committed is not None else 0


def staged_uploads(services: Services) -> list[Path]:
    return sorted(services.rollout.service.config.weights_dir.glob(".incoming-*"))


def serving_state(services: Services) -> dict[str, torch.Tensor]:
    """The weights the ledger holds (the model's own before any update)."""
    committed = WeightLedger(services.rollout.service.config.weights_dir).current()
    if committed is not None:
        return dict(iter_tensors(committed.files))
    return AutoModelForImageTextToText.from_pretrained(services.rollout.service.config.model).state_dict()


def noisy_state(services: Services, seed: int) -> dict[str, torch.Tensor]:
    """The model's weights with strong seeded noise, the head first: on its own it changes every token."""
    generator = torch.Generator().manual_seed(seed)
    base = AutoModelForImageTextToText.from_pretrained(services.rollout.service.config.model).state_dict()
    noisy = {name: tensor + 0.5 * torch.randn(tensor.shape, generator=generator) for name, tensor in base.items()}
    return {"lm_head.weight": noisy.pop("lm_head.weight"), **noisy}


def weight_stream(manifest: rollout_pb2.WeightManifest, blobs: list[bytes]) -> Iterator[rollout_pb2.LoadWeightsRequest]:
    yield rollout_pb2.LoadWeightsRequest(manifest=manifest)
    for index, blob in enumerate(blobs):
        yield rollout_pb2.LoadWeightsRequest(chunk=rollout_pb2.WeightChunk(index=index, payload=blob))


async def held_open(
    messages: list[rollout_pb2.LoadWeightsRequest], release: asyncio.Event
) -> AsyncIterator[rollout_pb2.LoadWeightsRequest]:
    """`messages`, then the stream held open and silent until `release` is set."""
    for message in messages:
        yield message
    await release.wait()


async def load_weights(
    stub: rollout_pb2_grpc.RolloutServiceStub, state: dict[str, torch.Tensor], version: int
) -> rollout_pb2.LoadWeightsResponse:
    manifest, blobs = pack(state, version=version, bucket_bytes=2**16)
    return await stub.LoadWeights(weight_stream(manifest, blobs), metadata=CONTROL, timeout=300)


async def reference_greedy(services: Services, prompt: common_pb2.Prompt, state: dict[str, torch.Tensor]) -> list[int]:
    """Greedy token ids of a transformers engine in this process holding exactly `state` (strict load), on
    the prompt as the service renders it."""
    config = services.rollout.service.config
    renderer = ChatRenderer(config.model, prompt=config.prompt)
    engine = TransformersEngine(renderer, max_model_len=config.max_model_len, device="cpu", trust_remote_code=False)
    engine.model.load_state_dict(state, strict=True)
    rendered = services.rollout.service.renderer.render(prompt, "prompts[0]", max_tokens=8)
    completions = await engine.generate([rendered], SamplingSpec(n=1, temperature=0.0, max_tokens=8))
    return completions[0][0].token_ids


async def test_a_version_far_ahead_is_refused_and_the_next_one_loads(services: Services) -> None:
    """Committing 2**63 (or 2**64-1) used to lock every later publish out: a version must be serving + 1."""
    state = noisy_state(services, seed=1)
    opened, stub = rollout_stub(services)
    async with opened:
        serving = await serving_version(stub)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await load_weights(stub, state, 2**63)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        expected = f"manifest.version: must be {serving + 1} (the serving version {serving} + 1), got {2**63}"
        assert caught.value.details() == expected
        assert await serving_version(stub) == ledger_version(services) == serving
        loaded = await load_weights(stub, state, serving + 1)
        assert loaded.policy_version == await serving_version(stub) == ledger_version(services) == serving + 1
        prompt = shapes_prompt(common_pb2.Image(data=png("red")))
        sample = (await stub.Generate(generate_request(prompt), metadata=USER, timeout=120)).samples[0]
        assert sample.policy_version == serving + 1
    await assert_generate_works(services)


async def test_an_oversized_manifest_is_refused_before_any_chunk(services: Services) -> None:
    """A manifest of a terabyte for a model of a few MB: refused at the manifest, without waiting for the
    chunks, and without reading the ones a client sends anyway."""
    cap = services.rollout.service.max_update_bytes
    claimed, metrics = 2**40, services.rollout.server.metrics
    opened, stub = rollout_stub(services)
    async with opened:
        serving = await serving_version(stub)
        manifest = rollout_pb2.WeightManifest(
            version=serving + 1, tensor_count=54, total_bytes=claimed, sha256="0" * 64, format="safetensors"
        )
        release = asyncio.Event()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.LoadWeights(
                held_open([rollout_pb2.LoadWeightsRequest(manifest=manifest)], release), metadata=CONTROL, timeout=60
            )
        release.set()
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith(f"manifest.total_bytes: {claimed} bytes is more than the cap of {cap}")

        offered, taken = 64, 0
        payload = bytes(4 * 2**20)

        def flood() -> Iterator[rollout_pb2.LoadWeightsRequest]:
            nonlocal taken
            yield rollout_pb2.LoadWeightsRequest(manifest=manifest)
            for index in range(offered):
                taken += 1
                yield rollout_pb2.LoadWeightsRequest(chunk=rollout_pb2.WeightChunk(index=index, payload=payload))

        refused = metrics.count(LOAD_WEIGHTS, "INVALID_ARGUMENT")
        before = rss()
        # The client may see its own failed write (INTERNAL) when a chunk races the status; the server's
        # own record says what it answered.
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.LoadWeights(flood(), metadata=CONTROL, timeout=120)
        growth = rss() - before
        assert metrics.count(LOAD_WEIGHTS, "INVALID_ARGUMENT") == refused + 1
        assert taken < offered, f"{taken} chunks of {len(payload) >> 20} MiB were read past a refused manifest"
        assert growth < RSS_GROWTH_BOUND, f"the rollout ingress grew by {growth >> 20} MiB"
        assert staged_uploads(services) == [] and await serving_version(stub) == serving
    await assert_generate_works(services)


async def test_storage_updates_are_capped_by_size_and_read_only_from_regular_files(services: Services) -> None:
    """LoadWeightsFromStorage sizes the shards by stat before hashing them; a shard that is a link to a
    device (st_size 0, endless to read) is refused, not read."""
    cap = services.rollout.service.max_update_bytes
    huge, device = services.images / "huge-update", services.images / "device-update"
    huge.mkdir()
    device.mkdir()
    with (huge / "weights-00000.safetensors").open("wb") as sparse:
        sparse.truncate(cap + 1)  # a hole: no disk used, yet more than any update of this model
    (device / "weights-00000.safetensors").symlink_to("/dev/zero")
    opened, stub = rollout_stub(services)
    try:
        async with opened:
            serving = await serving_version(stub)
            manifest = rollout_pb2.WeightManifest(
                version=serving + 1, tensor_count=54, total_bytes=cap, sha256="0" * 64, format="safetensors"
            )
            for folder, message in [(huge, f"uri: {cap + 1} bytes is more than the cap of {cap}"), (device, "uri: ")]:
                request = rollout_pb2.LoadWeightsFromStorageRequest(manifest=manifest, uri=str(folder))
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.LoadWeightsFromStorage(request, metadata=CONTROL, timeout=60)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert caught.value.details().startswith(message), caught.value.details()
            assert await serving_version(stub) == ledger_version(services) == serving
    finally:
        shutil.rmtree(huge)
        shutil.rmtree(device)
    await assert_generate_works(services)


def opening_messages(state: dict[str, torch.Tensor], version: int) -> list[rollout_pb2.LoadWeightsRequest]:
    """The manifest and first chunk of an update of several chunks: an upload that has begun."""
    manifest, blobs = pack(state, version=version, bucket_bytes=2**16)
    return [
        rollout_pb2.LoadWeightsRequest(manifest=manifest),
        rollout_pb2.LoadWeightsRequest(chunk=rollout_pb2.WeightChunk(index=0, payload=blobs[0])),
    ]


async def test_an_idle_weight_stream_is_cut_off_and_frees_the_next_update(services: Services) -> None:
    state = noisy_state(services, seed=2)
    opened, stub = rollout_stub(services)
    async with opened:
        serving = await serving_version(stub)
        first = opening_messages(state, serving + 1)
        release = asyncio.Event()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.LoadWeights(held_open(first, release), metadata=CONTROL, timeout=120)
        release.set()
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "LoadWeights stream sent nothing for 2 s (weight_stream_idle_seconds)" in caught.value.details()
        assert staged_uploads(services) == []
        assert await serving_version(stub) == ledger_version(services) == serving
        # Behind a load lock still held this would wait until its own deadline.
        assert (await load_weights(stub, state, serving + 1)).policy_version == serving + 1
    await assert_generate_works(services)


async def test_a_cancelled_weight_upload_leaves_nothing_behind(services: Services) -> None:
    state = noisy_state(services, seed=3)
    opened, stub = rollout_stub(services)
    async with opened:
        serving = await serving_version(stub)
        first = opening_messages(state, serving + 1)
        call = stub.LoadWeights(held_open(first, asyncio.Event()), metadata=CONTROL, timeout=120)
        async with asyncio.timeout(60):
            while not staged_uploads(services):  # the server took the manifest and staged the upload
                await asyncio.sleep(0.02)
        assert call.cancel(), "the upload was still open when the client left"
        async with asyncio.timeout(60):
            while staged_uploads(services):
                await asyncio.sleep(0.02)
        assert (await load_weights(stub, state, serving + 1)).policy_version == serving + 1
    await assert_generate_works(services)


async def test_a_replica_whose_reload_fails_half_way_never_serves_mixed_weights(services: Services) -> None:
    """The reload raises after the first tensor: the replica restarts into the committed version, and
    status, ledger and the replica's samples all say, and are, that version."""
    prompt = shapes_prompt(common_pb2.Image(data=png("red")))
    old, new = serving_state(services), noisy_state(services, seed=4)
    mixed = {**old, "lm_head.weight": new["lm_head.weight"]}  # what the replica holds when the load fails
    expected = await reference_greedy(services, prompt, new)
    assert expected != await reference_greedy(services, prompt, mixed), "mixed weights would go unnoticed"
    assert expected != await reference_greedy(services, prompt, old), "the update would go unnoticed"
    replica = services.rollout.pool.actors[0]
    pid = await actor_pid(replica)
    opened, stub = rollout_stub(services)
    async with opened:
        serving = await serving_version(stub)
        services.failpoints.write_text(f"{FAILPOINT_AFTER_FIRST_TENSOR}=raise\n")
        loaded = await load_weights(stub, new, serving + 1)
        assert services.failpoints.read_text() == "", "the reload did not fail half-way: the failpoint never fired"
        assert await actor_pid(replica) != pid, "the replica went on in the process that failed its reload"
        assert (loaded.policy_version, loaded.replicas_loaded) == (serving + 1, 1)
        sample = (await stub.Generate(generate_request(prompt), metadata=USER, timeout=120)).samples[0]
        assert await serving_version(stub) == ledger_version(services) == sample.policy_version == serving + 1
        assert list(sample.token_ids) == expected, "the replica serves other weights than the committed ones"
    await assert_generate_works(services)


# --- reward and controller: BuildPairs, run ids, data paths (helper C) ----------------------------------------


def arith_prompt(prompt_id: str = "sum") -> common_pb2.Prompt:
    return common_pb2.Prompt(id=prompt_id, question="What is 7 + 12?", answer="19", task="arith")


def right_and_wrong(prompt_id: str, count: int) -> list[common_pb2.Sample]:
    """`count` distinct right answers, then `count` distinct wrong ones (none of them states 19)."""
    right = [f"7 + 12 = 19, check {i}. Final answer: 19" for i in range(count)]
    wrong = [f"7 + 12 = {1000 + i}. Final answer: {1000 + i}" for i in range(count)]
    return [common_pb2.Sample(prompt_id=prompt_id, index=i, text=text) for i, text in enumerate(right + wrong)]


async def test_one_prompt_with_thousands_of_answers_gives_the_cap_in_bounded_memory(services: Services) -> None:
    """3,000 right x 3,000 wrong answers of one prompt are 9 million candidate pairs: the labelling worker
    counts them instead of listing them, and answers with exactly the cap."""
    worker = psutil.Process(await actor_pid(services.reward.service.workers[0]))
    cap = LIMITS.max_pairs_per_request
    request = reward_pb2.BuildPairsRequest(
        prompts=[arith_prompt()],
        samples=right_and_wrong("sum", 3000),
        round=1,
        options=reward_pb2.PairOptions(max_pairs_per_prompt=cap, seed=5),
    )
    opened, stub = reward_stub(services)
    async with opened:
        too_many = reward_pb2.BuildPairsRequest()
        too_many.CopyFrom(request)
        too_many.options.max_pairs_per_prompt = cap + 1
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.BuildPairs(too_many, metadata=USER, timeout=60)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details() == (
            f"options.max_pairs_per_prompt: must be at most {cap} (max_pairs_per_request), got {cap + 1}"
        )

        worker_before, ingress_before = worker.memory_info().rss, rss()
        built = await stub.BuildPairs(request, metadata=USER, timeout=60)
        worker_growth, ingress_growth = worker.memory_info().rss - worker_before, rss() - ingress_before
        assert len(built.pairs) == built.stats.pairs_correctness == cap
        assert len({pair.id for pair in built.pairs}) == cap
        assert all(pair.chosen.endswith(": 19") and not pair.rejected.endswith(": 19") for pair in built.pairs)
        assert worker_growth < RSS_GROWTH_BOUND, f"labelling worker grew by {worker_growth / 2**20:.0f} MiB"
        assert ingress_growth < RSS_GROWTH_BOUND, f"reward ingress grew by {ingress_growth / 2**20:.0f} MiB"

        normal = reward_pb2.BuildPairsRequest(prompts=[arith_prompt("few")], samples=right_and_wrong("few", 2))
        assert len((await stub.BuildPairs(normal, metadata=USER, timeout=60)).pairs) == 4


def run_yaml(train: Path | str, heldout: Path | str, **fields: object) -> str:
    return yaml.safe_dump({"data": {"train": str(train), "heldout": str(heldout)}, **fields})


async def rejected(call: Awaitable[object]) -> str:
    """The details of an INVALID_ARGUMENT answer to `call`."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
    return caught.value.details() or ""


async def test_run_ids_and_data_paths_cannot_reach_outside_the_controllers_folders(services: Services) -> None:
    """A run id is a slug; the files a StartRun names lie in the data roots, and outside reads like missing."""
    shapes = {"id": "q", "question": "How many shapes are there?", "answer": "1", "task": "shapes"}
    heldout = services.data / "heldout.jsonl"
    heldout.write_text(json.dumps(shapes) + "\n")
    outside_image = services.data / "outside-image.jsonl"  # rows naming an image outside the data roots
    outside_image.write_text(json.dumps({**shapes, "images": [str(services.images / "red.png")]}) + "\n")
    (services.data / "passwd.jsonl").symlink_to("/etc/passwd")
    before = {path for path in services.root.rglob("*") if not path.is_relative_to(services.root / "store")}
    opened, stub = controller_stub(services)
    async with opened:

        def start(config_yaml: str, run_id: str = "") -> Awaitable[object]:
            request = controller_pb2.StartRunRequest(config_yaml=config_yaml, run_id=run_id)
            return stub.StartRun(request, metadata=CONTROL, timeout=60)

        details = await rejected(start(run_yaml(heldout, heldout), run_id="../escape"))
        assert details.startswith("run_id: must be letters, digits, '.', '_' or '-'")
        details = await rejected(start(run_yaml(heldout, heldout, run_id="../x")))
        assert details.startswith("config_yaml: invalid run config") and "run_id" in details
        roots = f"the controller's data roots ({services.data.resolve()}; controller.data_roots)"
        outside = f"config_yaml: data.train: outside {roots}"
        for train in ("/etc/passwd", services.root / "missing" / "train.jsonl", services.data / "passwd.jsonl"):
            assert await rejected(start(run_yaml(train, heldout))) == outside, train
        details = await rejected(start(run_yaml(outside_image, heldout)))
        assert details.startswith("config_yaml: data.train: prompt 'q': image outside the controller's data roots")
        assert f"({services.data.resolve()}, " in details
        for run_id in ("../x", "a/b", ".."):
            get = stub.GetRun(controller_pb2.GetRunRequest(run_id=run_id), metadata=CONTROL, timeout=60)
            assert (await rejected(get)).startswith("run_id: must be letters"), run_id
        assert not (await stub.ListRuns(controller_pb2.ListRunsRequest(), metadata=CONTROL, timeout=60)).runs
    after = {path for path in services.root.rglob("*") if not path.is_relative_to(services.root / "store")}
    assert after == before, "a refused StartRun created files outside the store"
    assert not list((services.root / "store").glob("*escape*")) and not (services.root / "store" / "runs").exists()


async def test_start_run_loads_no_code_from_outside_the_data_roots(services: Services) -> None:
    """Checking a run config imports its plug-in verifier files and reads its model directories (their Python,
    with trust_remote_code): StartRun refuses names outside the data roots before anything is loaded."""
    marker = services.root / "plugin-ran"
    plugin = services.root / "plugin.py"  # outside the data roots
    plugin.write_text(f"open({str(marker)!r}, 'w').close()\n\ndef judge(response, record):\n    return True\n")
    heldout = services.data / "code-heldout.jsonl"
    heldout.write_text(json.dumps({"id": "q", "question": "What is 1 + 1?", "answer": "2", "task": "arith"}) + "\n")
    roots = f"outside the controller's data roots ({services.data.resolve()}; controller.data_roots)"
    opened, stub = controller_stub(services)
    async with opened:
        for fields, field in [
            ({"reward": {"verifiers": {"arith": f"{plugin}:judge"}}}, "reward.verifiers.arith"),
            ({"model": str(services.rollout.service.config.model), "trust_remote_code": True}, "model"),
            ({"reward": {"scorer": {"model": "/etc"}}}, "reward.scorer.model"),
        ]:
            request = controller_pb2.StartRunRequest(config_yaml=run_yaml(heldout, heldout, **fields))
            details = await rejected(stub.StartRun(request, metadata=CONTROL, timeout=60))
            assert details == f"config_yaml: {field}: {roots}"
        assert not marker.exists(), "the plug-in file was executed"
        assert not (await stub.ListRuns(controller_pb2.ListRunsRequest(), metadata=CONTROL, timeout=60)).runs


async def test_a_held_out_scene_the_hallucination_metric_cannot_read_is_refused(services: Services) -> None:
    """Held-out descriptions are judged against `meta.scene` every evaluation: a malformed scene is refused
    when the run starts, naming the prompt and the entry, not in the middle of round 1's evaluation."""
    train = services.data / "scene-train.jsonl"
    train.write_text(json.dumps({"id": "t", "question": "What is 1 + 1?", "answer": "2", "task": "arith"}) + "\n")
    heldout = services.data / "scene-heldout.jsonl"
    scene = [{"colour": "red", "shape": "circle"}, {"colour": "purple", "shape": "circle"}]
    row = {"id": "d1", "question": "Describe the image.", "task": "describe", "meta": {"scene": scene}}
    heldout.write_text(json.dumps(row) + "\n")
    opened, stub = controller_stub(services)
    async with opened:
        request = controller_pb2.StartRunRequest(config_yaml=run_yaml(train, heldout), run_id="scenes")
        details = await rejected(stub.StartRun(request, metadata=CONTROL, timeout=60))
        assert details.startswith("config_yaml: data.heldout: prompt 'd1': meta.scene[1]: needs colour in"), details
        assert "'purple'" in details
        runs = await stub.ListRuns(controller_pb2.ListRunsRequest(), metadata=CONTROL, timeout=60)
        assert "scenes" not in [run.run_id for run in runs.runs]


async def test_data_whose_meta_the_services_would_refuse_is_refused_when_the_run_starts(services: Services) -> None:
    """Every round sends each prompt's `meta` as JSON; one above `max_meta_bytes` would be refused only when
    its round sampled it, so StartRun refuses the run instead, naming the prompt and the limit."""
    train = services.data / "meta-train.jsonl"
    rows = [
        {"id": "small", "question": "What is 1 + 1?", "answer": "2", "task": "arith", "meta": {"note": "fine"}},
        {"id": "large", "question": "What is 1 + 2?", "answer": "3", "task": "arith", "meta": {"note": "x" * 70_000}},
    ]
    train.write_text("".join(json.dumps(row) + "\n" for row in rows))
    opened, stub = controller_stub(services)
    async with opened:
        request = controller_pb2.StartRunRequest(config_yaml=run_yaml(train, train), run_id="big-meta")
        details = await rejected(stub.StartRun(request, metadata=CONTROL, timeout=60))
        assert details == (
            "config_yaml: data.train: prompt 'large': meta is 70011 bytes of JSON, above "
            "reward.server.limits.max_meta_bytes (65536); raise the limit or drop columns from meta"
        ), details
        runs = await stub.ListRuns(controller_pb2.ListRunsRequest(), metadata=CONTROL, timeout=60)
        assert "big-meta" not in [run.run_id for run in runs.runs]
