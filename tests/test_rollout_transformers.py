"""The rollout service with the transformers backend: the tiny image-text model on CPU, through gRPC.

Also the service behaviour that does not depend on the engine (backpressure, image URIs) and the
`mpo serve rollout` / `mpo client generate` command line.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
import ray
import torch
from transformers import AutoTokenizer

from mpo.config import RolloutConfig
from mpo.models.tiny import build_image_text_model, build_text_model
from mpo.prompts import PromptRenderer
from mpo.services.rollout.engines import EngineUnavailable, resolve_backend
from mpo.services.rollout.engines.base import SamplingSpec
from mpo.services.rollout.engines.transformers_engine import TransformersEngine
from mpo.services.rollout.server import RunningRollout, start_rollout
from mpo.serving.clients import RolloutClient
from mpo.v1 import common_pb2, rollout_pb2
from mpo.weights import pack
from tests.rollout_helpers import CORPUS, SMALL, VISION, arith_prompt, png, raw_stub

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest.fixture(scope="module")
def vl_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_image_text_model(tmp_path_factory.mktemp("vl"), CORPUS, SMALL, VISION, seed=0)


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("images")
    (directory / "red.png").write_bytes(png("red"))
    return directory


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def vl_rollout(vl_model: Path, images_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> RunningRollout:
    ray.init(num_cpus=8, include_dashboard=False, namespace="mpo-rollout-hf-tests", log_to_driver=False)
    config = RolloutConfig(
        model=vl_model,
        weights_dir=tmp_path_factory.mktemp("ledger"),
        readable_roots=[images_dir],
        max_model_len=512,
    )
    running = await start_rollout(config)
    yield running
    await running.stop(0)
    ray.shutdown()


def scene_prompt(*images: common_pb2.Image, prompt_id: str = "v0") -> common_pb2.Prompt:
    return common_pb2.Prompt(id=prompt_id, question="How many shapes are there?", task="shapes", images=images)


async def test_auto_backend_serves_image_text_with_transformers_on_cpu(
    vl_rollout: RunningRollout, vl_model: Path
) -> None:
    async with RolloutClient(vl_rollout.address) as client:
        status = await client.status()
    assert (status.engine.backend, status.engine.device, status.ready) == ("transformers", "cpu", True)
    with pytest.raises(EngineUnavailable, match="backend 'vllm' cannot serve the image-text model"):
        resolve_backend(RolloutConfig(model=vl_model, backend="vllm"), "cpu")


async def test_samples_from_an_image_bytes_or_uri(vl_rollout: RunningRollout, images_dir: Path) -> None:
    params = common_pb2.SamplingParams(n=2, temperature=1.0, max_tokens=8, seed=1, return_logprobs=True)
    async with RolloutClient(vl_rollout.address) as client:
        by_bytes = await client.generate([scene_prompt(common_pb2.Image(data=png("red")))], params)
        by_uri = await client.generate([scene_prompt(common_pb2.Image(uri=f"file://{images_dir / 'red.png'}"))], params)
        assert [s.index for s in by_bytes.samples] == [0, 1]
        for sample in by_bytes.samples:
            assert len(sample.token_ids) >= 1 and len(sample.logprobs) == len(sample.token_ids)
        assert [list(s.token_ids) for s in by_bytes.samples] == [list(s.token_ids) for s in by_uri.samples]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.generate([scene_prompt(common_pb2.Image(uri="/etc/hostname"))], params)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith("prompts[0].images[0].uri: ")


async def test_continuation_with_and_without_the_image_differ(vl_rollout: RunningRollout) -> None:
    prompt = scene_prompt(common_pb2.Image(data=png("blue")))
    params = common_pb2.SamplingParams(n=1, temperature=0.0, max_tokens=6, return_logprobs=True)
    continuations = [
        rollout_pb2.Continuation(prompt=prompt, prefix="I count", drop_images=False),
        rollout_pb2.Continuation(prompt=prompt, prefix="I count", drop_images=True),
    ]
    async with RolloutClient(vl_rollout.address) as client:
        response = await client.continue_prefixes(continuations, params)
    with_image, without_image = response.samples
    assert (with_image.prompt_id, with_image.index, without_image.index) == ("v0", 0, 0)
    assert list(with_image.logprobs) != list(without_image.logprobs), "the image must condition the continuation"


async def test_a_continuation_is_held_to_its_total_token_budget(vl_rollout: RunningRollout, vl_model: Path) -> None:
    """`max_total_tokens` counts the prefix's tokens: the continuation is the unbounded one cut where prefix
    plus continuation reach the budget (one token at least), its text decoded from what is kept."""
    tokenizer = AutoTokenizer.from_pretrained(vl_model)
    prefix = "I count"
    prefix_tokens = len(tokenizer(prefix, add_special_tokens=False).input_ids)
    prompt = scene_prompt(common_pb2.Image(data=png("blue")))
    params = common_pb2.SamplingParams(n=1, temperature=0.0, max_tokens=8, return_logprobs=True)
    continuations = [
        rollout_pb2.Continuation(prompt=prompt, prefix=prefix, drop_images=True, max_total_tokens=total)
        for total in (0, prefix_tokens + 3, 1)
    ]
    async with RolloutClient(vl_rollout.address) as client:
        free, held, least = (await client.continue_prefixes(continuations, params)).samples
    assert len(free.token_ids) > 3, "the unbounded continuation must run past the budget for the cut to show"
    assert list(held.token_ids) == list(free.token_ids)[:3] and list(held.logprobs) == list(free.logprobs)[:3]
    assert held.text == tokenizer.decode(list(held.token_ids), skip_special_tokens=True)
    assert free.text.startswith(held.text) and len(held.text) < len(free.text)
    assert held.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert list(least.token_ids) == list(free.token_ids)[:1], "a budget the prefix fills still gets one token"


async def test_a_continuation_held_from_below_is_not_ended_by_a_stop_string(
    vl_rollout: RunningRollout, vl_model: Path
) -> None:
    """`min_total_tokens`: a stop string the greedy continuation writes early ends it when there is no floor;
    held to its whole budget from below, the same tokens run on past it, the text keeping it."""
    tokenizer = AutoTokenizer.from_pretrained(vl_model)
    prefix = "I count"
    total = len(tokenizer(prefix, add_special_tokens=False).input_ids) + 8
    prompt = scene_prompt(common_pb2.Image(data=png("blue")))
    greedy = common_pb2.SamplingParams(n=1, temperature=0.0, max_tokens=8)
    free = rollout_pb2.Continuation(prompt=prompt, prefix=prefix, drop_images=True)
    async with RolloutClient(vl_rollout.address) as client:
        (unstopped,) = (await client.continue_prefixes([free], greedy)).samples
        assert len(unstopped.token_ids) == 8, "the greedy continuation must run to its bound for this test"
        stop = next(text for t in unstopped.token_ids[1:] if (text := tokenizer.decode([t]).strip()))
        with_stop = common_pb2.SamplingParams(n=1, temperature=0.0, max_tokens=8, stop=[stop])
        held = rollout_pb2.Continuation(
            prompt=prompt, prefix=prefix, drop_images=True, min_total_tokens=total, max_total_tokens=total
        )
        stopped, run_on = (await client.continue_prefixes([free, held], with_stop)).samples
    assert stopped.finish_reason == common_pb2.FINISH_REASON_STOP and stop not in stopped.text
    assert len(stopped.token_ids) < 8 and unstopped.text.startswith(stopped.text)
    assert list(run_on.token_ids) == list(unstopped.token_ids) and run_on.text == unstopped.text
    assert stop in run_on.text and run_on.finish_reason == common_pb2.FINISH_REASON_LENGTH


async def test_an_engine_floor_holds_back_the_end_of_turn(vl_model: Path) -> None:
    """A model made to end its answer at once (its end-of-turn row of the output layer set to twice the row
    of the token it would write first): `EngineInput.min_tokens` keeps every end-of-turn token out until the
    floor. Sampled rows are held as greedy ones are."""
    renderer = PromptRenderer(vl_model, max_model_len=512, readable_roots=[])
    engine = TransformersEngine(renderer.chat_renderer, max_model_len=512, device="cpu", trust_remote_code=False)
    item = renderer.render(scene_prompt(common_pb2.Image(data=png("red"))), "prompts[0]", max_tokens=8)
    greedy = SamplingSpec(n=1, temperature=0.0, max_tokens=8)
    (first,) = (await engine.generate([item], greedy))[0]
    end = renderer.chat_renderer.end_of_turn_id
    with torch.no_grad():
        engine.model.lm_head.weight[end] = 2 * engine.model.lm_head.weight[first.token_ids[0]]
    (at_once,) = (await engine.generate([item], greedy))[0]
    assert (at_once.token_ids, at_once.finish_reason) == ([end], "stop"), "the edited model must end at once"
    floored = [replace(item, min_tokens=5), replace(item, min_tokens=8), item]  # rows of one batch
    (run_on,), (to_bound,), (unheld,) = await engine.generate(floored, greedy)
    assert end not in run_on.token_ids[:5] and len(run_on.token_ids) > 5
    assert end not in to_bound.token_ids and len(to_bound.token_ids) == 8 and to_bound.finish_reason == "length"
    assert unheld.token_ids == [end], "a row without a floor in the same batch still ends at once"
    sampled = await engine.generate([replace(item, min_tokens=5)], SamplingSpec(n=4, max_tokens=8, seed=3))
    assert all(end not in c.token_ids[:5] and len(c.token_ids) >= 6 for c in sampled[0])


async def test_a_static_kv_cache_draws_the_same_samples(
    vl_rollout: RunningRollout, vl_model: Path, tmp_path: Path
) -> None:
    """`transformers_kv_cache: static` changes only how the cache is held: same seed, same samples (rows of
    different prompt lengths, so left padding is in play). Runs before the weight update below."""
    config = RolloutConfig(
        model=vl_model, weights_dir=tmp_path / "w", max_model_len=512, transformers_kv_cache="static"
    )  # fmt: skip
    static = await start_rollout(config)
    prompts = [
        scene_prompt(common_pb2.Image(data=png("red")), prompt_id="short"),
        common_pb2.Prompt(
            id="long", question="Which colours do the shapes in this picture have, and how many are there?",
            task="shapes", images=[common_pb2.Image(data=png("blue"))],
        ),
    ]  # fmt: skip
    params = common_pb2.SamplingParams(n=4, temperature=1.0, max_tokens=12, seed=7, return_logprobs=True)
    try:
        async with RolloutClient(vl_rollout.address) as dynamic_client, RolloutClient(static.address) as static_client:
            dynamic_samples = (await dynamic_client.generate(prompts, params)).samples
            static_samples = (await static_client.generate(prompts, params)).samples
    finally:
        await static.stop(0)
    assert len(static_samples) == len(dynamic_samples) == 8
    assert len({tuple(s.token_ids) for s in static_samples}) > 1, "sampled rows differ from one another"
    for dynamic_sample, static_sample in zip(dynamic_samples, static_samples, strict=True):
        assert list(static_sample.token_ids) == list(dynamic_sample.token_ids)
        assert list(static_sample.logprobs) == pytest.approx(list(dynamic_sample.logprobs), abs=1e-4)


async def test_weight_update_on_the_transformers_backend(vl_rollout: RunningRollout, vl_model: Path) -> None:
    from transformers import AutoModelForImageTextToText

    state = {k: v * 1.01 for k, v in AutoModelForImageTextToText.from_pretrained(vl_model).state_dict().items()}
    manifest, blobs = pack(state, version=1)
    params = common_pb2.SamplingParams(n=1, temperature=0.0, max_tokens=4, return_logprobs=True)
    prompt = scene_prompt(common_pb2.Image(data=png("red")))
    async with RolloutClient(vl_rollout.address) as client:
        before = (await client.generate([prompt], params)).samples[0]
        response = await client.load_weights(manifest, blobs)
        after = (await client.generate([prompt], params)).samples[0]
    assert (response.policy_version, response.replicas_loaded) == (1, 1)
    assert (before.policy_version, after.policy_version) == (0, 1)
    assert list(before.logprobs) != list(after.logprobs)


@pytest_asyncio.fixture(loop_scope="module")
async def narrow_rollout(vl_rollout: RunningRollout, tmp_path: Path) -> RunningRollout:
    """One transformers replica holding a single request: the smallest queue there is."""
    model = build_text_model(tmp_path / "text", CORPUS, SMALL, seed=0)
    config = RolloutConfig(model=model, backend="transformers", max_queued_requests=1, weights_dir=tmp_path / "w")
    running = await start_rollout(config)
    yield running
    await running.stop(0)


async def test_full_queue_answers_resource_exhausted(narrow_rollout: RunningRollout) -> None:
    channel, stub = raw_stub(narrow_rollout.address)
    long = rollout_pb2.GenerateRequest(
        prompts=[arith_prompt()], sampling=common_pb2.SamplingParams(n=8, temperature=1.0, max_tokens=200)
    )
    outcomes = await asyncio.gather(*(stub.Generate(long, timeout=120) for _ in range(3)), return_exceptions=True)
    await channel.close()
    refused = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(refused) == 2 and all(o.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for o in refused)
    assert "max_queued_requests" in refused[0].details()
    assert sum(isinstance(o, rollout_pb2.GenerateResponse) for o in outcomes) == 1
