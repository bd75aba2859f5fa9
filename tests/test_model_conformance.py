"""The conformance matrix: every supported model family, end to end through the real services.

For each family, a tiny random-weight model built from the family's own transformers classes, chat
template and special tokens (`mpo/models/families.py`) goes through what an online round does:
rollout (vLLM where the CPU build runs the family, the transformers backend otherwise) → reward (a
plug-in verifier from a module outside the package; DropoutNTP continuations without the image for
image-text families) → MPO on 2 DeepSpeed ZeRO-3 ranks with every processor output the model needs →
publish to the rollout service → the rollout's greedy output equals plain transformers on the exported
checkpoint.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import ray
import torch

from mpo.chat import ChatRenderer, open_images
from mpo.config import RequestLimits, RewardConfig, RolloutConfig, ServerConfig
from mpo.models.families import FAMILIES, build_family_model
from mpo.models.loading import load_model
from mpo.services.reward.service import start_reward
from mpo.services.rollout.server import start_rollout
from mpo.serving.clients import RewardClient, RolloutClient, TrainerClient
from mpo.trainer.export import export_checkpoint
from mpo.trainer.service import start_trainer
from mpo.v1 import common_pb2, trainer_pb2
from tests.rollout_helpers import png
from tests.test_trainer_deepspeed import config_for

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

#: A user's verifier, as a file outside the package: right when the response has an even length, which a
#: random-weight policy gets right about half the time, so every family yields correctness pairs.
VERIFIER = textwrap.dedent(
    """
    def even_length(response, record):
        return len(response) % 2 == 0
    """
)
TASK = "parity"
GREEDY = common_pb2.SamplingParams(n=1, temperature=0.0, max_tokens=12)
SAMPLING = common_pb2.SamplingParams(n=6, temperature=1.0, top_k=0, max_tokens=12, seed=7)


def limits() -> ServerConfig:
    return ServerConfig(limits=RequestLimits(known_tasks=["arith", TASK]))


def prompts(image_text: bool) -> list[common_pb2.Prompt]:
    """Three graded prompts (with an image each for image-text families) and, for those, one open-ended
    prompt with an image, which only DropoutNTP can turn into pairs."""
    made = []
    for i, colour in enumerate(("red", "green", "blue")):
        prompt = common_pb2.Prompt(id=f"q{i}", question=f"Is the answer to question {i} even?", task=TASK, answer="yes")
        if image_text:
            prompt.images.add(data=png(colour))
        made.append(prompt)
    if image_text:
        open_ended = common_pb2.Prompt(id="open", question="Describe the picture.", task=TASK)
        open_ended.images.add(data=png("red"))
        made.append(open_ended)
    return made


def reference_greedy(model_dir: Path, prompt: common_pb2.Prompt, max_tokens: int) -> list[int]:
    """Plain transformers on the exported directory: the same rendered prompt, greedy, up to the first
    token that ends generation (kept, as the rollout service keeps it)."""
    renderer = ChatRenderer(model_dir)
    model = load_model(model_dir).eval()
    images = open_images([image.data for image in prompt.images])
    inputs = renderer.encode([renderer.prompt_text(prompt.question, len(images))], images)
    stops = renderer.stop_token_ids()
    with torch.no_grad():
        output = model.generate(
            **inputs, max_new_tokens=max_tokens, do_sample=False, eos_token_id=stops, pad_token_id=stops[0]
        )
    ids = output[0, inputs["input_ids"].shape[1] :].tolist()
    ends = [k for k, token in enumerate(ids) if token in stops]
    return ids[: ends[0] + 1] if ends else ids


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("conformance")


@pytest.fixture(scope="module")
def verifier(root: Path) -> str:
    path = root / "user_code" / "my_verifiers.py"
    path.parent.mkdir()
    path.write_text(VERIFIER)
    return f"{path}:even_length"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ray_cluster() -> AsyncIterator[None]:
    ray.init(num_cpus=8, include_dashboard=False, namespace="mpo-conformance-tests", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.parametrize("family", sorted(FAMILIES))
async def test_family_goes_through_rollout_reward_training_and_publishing(
    family: str, root: Path, verifier: str, ray_cluster: None
) -> None:
    spec = FAMILIES[family]
    work = root / family
    model = build_family_model(family, work / "model", seed=0)
    rollout = await start_rollout(
        RolloutConfig(
            model=model, backend="vllm" if spec.vllm_cpu else "transformers", dtype="float32", enforce_eager=True,
            max_model_len=512, kv_cache_bytes=16 * 2**20, weights_dir=work / "ledger", server=limits(),
        )
    )  # fmt: skip
    reward = await start_reward(
        RewardConfig(rollout_address=rollout.address, verifiers={TASK: verifier}, server=limits())
    )
    trainer = await start_trainer(
        config_for(model, work, rollout_address=rollout.address, max_length=512, server=limits())
    )
    try:
        async with (
            RolloutClient(rollout.address, timeout=300) as sampler,
            RewardClient(reward.address, timeout=300) as labeller,
            TrainerClient(trainer.address, timeout=600) as learner,
        ):
            asked = prompts(spec.image_text)
            samples = (await sampler.generate(asked, SAMPLING)).samples
            assert len(samples) == len(asked) * SAMPLING.n and all(s.policy_version == 0 for s in samples)
            built = await labeller.build_pairs(asked, samples, round=1)
            sources = {pair.source for pair in built.pairs}
            assert common_pb2.PAIR_SOURCE_CORRECTNESS in sources, built.skipped_prompts
            if spec.image_text:
                assert common_pb2.PAIR_SOURCE_DROPOUT_NTP in sources, built.skipped_prompts
            trained = await learner.train(built.pairs, prompts=built.prompts, round=1)
            assert trained.steps and all(math.isfinite(s.loss) for s in trained.steps)
            published = await learner.publish_weights(1, trainer_pb2.WEIGHT_TRANSPORT_GRPC_STREAM)
            assert published.replicas_loaded == 1
            checkpoint = await learner.checkpoint("conformance")
            served = (await sampler.generate(asked[:1], GREEDY)).samples[0]
        assert served.policy_version == 1
        exported = export_checkpoint(Path(checkpoint.path), work / "exported")
        expected = reference_greedy(exported, asked[0], GREEDY.max_tokens)
        assert list(served.token_ids) == expected, "the rollout serves exactly the trained weights"
    finally:
        await trainer.stop(0)
        await reward.stop(0)
        await rollout.stop(0)
