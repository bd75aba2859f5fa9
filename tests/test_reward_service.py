"""RewardService end to end: labelling workers in Ray, DropoutNTP against the real rollout service
(transformers backend, tiny image-text model), the model-based scorer, and bad input."""

from __future__ import annotations

import grpc
import pytest
import pytest_asyncio
import ray

from mpo.config import RewardConfig, RolloutConfig, ScorerConfig
from mpo.models.tiny import build_image_text_model, build_text_model
from mpo.services.common.clients import RewardClient
from mpo.services.reward.service import RunningReward, start_reward
from mpo.services.rollout.server import RunningRollout, start_rollout
from mpo.v1 import common_pb2, reward_pb2
from tests.rollout_helpers import CORPUS, SMALL, VISION, png

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def services(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunningRollout, RunningReward]:
    root = tmp_path_factory.mktemp("reward")
    ray.init(num_cpus=8, include_dashboard=False, namespace="mpo-reward-tests", log_to_driver=False)
    vl_model = build_image_text_model(root / "vl", CORPUS, SMALL, VISION, seed=0)
    text_model = build_text_model(root / "text", CORPUS, SMALL, seed=0)
    rollout = await start_rollout(RolloutConfig(model=vl_model, weights_dir=root / "w", max_model_len=512))
    reward = await start_reward(
        RewardConfig(
            workers=2,
            rollout_address=rollout.address,
            continuation_max_tokens=12,
            scorer=ScorerConfig(model=text_model),
        )
    )
    yield rollout, reward
    await reward.stop(0)
    await rollout.stop(0)
    ray.shutdown()


def arith(prompt_id: str, answer: str = "19") -> common_pb2.Prompt:
    return common_pb2.Prompt(id=prompt_id, question="What is 12 + 7?", task="arith", answer=answer)


def sample(prompt_id: str, index: int, text: str, version: int = 3) -> common_pb2.Sample:
    return common_pb2.Sample(prompt_id=prompt_id, index=index, text=text, policy_version=version)


RIGHT = "12 + 7 = 19. Final answer: 19"
WRONG = "12 + 7 = 20. Final answer: 20"
OTHER_WRONG = "12 plus 7 makes 18. Final answer: 18"
UNPARSABLE = "I am not sure about this one"


async def test_score_judges_each_sample_with_the_task_verifier(services) -> None:
    _, reward = services
    mc = common_pb2.Prompt(id="mc", question="Which colour?", task="shapes", answer="B", choices=["red", "blue"])
    open_ended = common_pb2.Prompt(id="d", question="Describe the image.", task="describe")
    samples = [
        sample("a", 0, RIGHT), sample("a", 1, WRONG), sample("a", 2, UNPARSABLE),
        sample("mc", 0, "It is blue. Final answer: (B)"), sample("d", 0, "A red circle. Final answer: circle"),
    ]  # fmt: skip
    async with RewardClient(reward.address) as client:
        response = await client.score([arith("a"), mc, open_ended], samples)
    verdicts = [(s.prompt_id, s.index, s.verdict, s.extracted_answer, s.verifier) for s in response.scores]
    assert verdicts == [
        ("a", 0, reward_pb2.VERDICT_CORRECT, "19", "numeric"),
        ("a", 1, reward_pb2.VERDICT_WRONG, "20", "numeric"),
        ("a", 2, reward_pb2.VERDICT_UNPARSABLE, "", ""),
        ("mc", 0, reward_pb2.VERDICT_CORRECT, "(B)", "multiple_choice"),
        ("d", 0, reward_pb2.VERDICT_NO_GROUND_TRUTH, "circle", ""),
    ]
    stats = response.stats
    assert (stats.prompts, stats.samples, stats.correct, stats.wrong, stats.unparsable) == (3, 5, 2, 2, 1)
    assert dict(stats.accuracy_by_task) == pytest.approx({"arith": 1 / 3, "shapes": 1.0})
    assert (stats.pairs_correctness, stats.pairs_dropout_ntp) == (0, 0)
    rewards = [s.reward for s in response.scores]
    assert all(s.HasField("reward") and r < 0 for s, r in zip(response.scores, rewards, strict=True))
    assert len(set(rewards)) == len(rewards), "the scorer must tell different responses apart"


async def test_build_pairs_correctness_cap_seed_and_skips(services) -> None:
    _, reward = services
    prompts = [arith("mixed"), arith("easy"), arith("hard")]
    samples = [
        *(sample("mixed", i, f"Step {i}: 12 + 7 = 19. Final answer: 19") for i in range(3)),
        sample("mixed", 3, WRONG), sample("mixed", 4, OTHER_WRONG), sample("mixed", 5, UNPARSABLE),
        sample("easy", 0, RIGHT), sample("easy", 1, "Add: 19. Final answer: 19"),
        sample("hard", 0, WRONG), sample("hard", 1, OTHER_WRONG),
    ]  # fmt: skip
    options = reward_pb2.PairOptions(max_pairs_per_prompt=4, seed=7)
    async with RewardClient(reward.address) as client:
        first = await client.build_pairs(prompts, samples, round=5, options=options)
        again = await client.build_pairs(prompts, samples, round=5, options=options)
        uncapped = await client.build_pairs(prompts, samples, round=5)
    assert len(first.pairs) == 4 and [p.id for p in first.pairs] == [p.id for p in again.pairs]
    assert len(uncapped.pairs) == 9  # 3 right x 3 wrong, under the default cap of 15
    assert len({p.id for p in uncapped.pairs}) == 9
    for pair in first.pairs:
        assert pair.source == common_pb2.PAIR_SOURCE_CORRECTNESS and pair.prompt.id == "mixed"
        assert pair.chosen.endswith("Final answer: 19") and not pair.rejected.endswith("Final answer: 19")
        assert (pair.provenance.round, pair.provenance.policy_version, pair.provenance.verifier) == (5, 3, "numeric")
        assert pair.provenance.chosen_sample_index < 3 <= pair.provenance.rejected_sample_index
    assert dict(first.skipped_prompts) == {"easy": "all_correct", "hard": "all_wrong"}
    assert (first.stats.prompts_all_correct, first.stats.prompts_all_wrong, first.stats.pairs_correctness) == (1, 1, 4)


async def test_step_check_labels_lucky_answers_wrong_and_keeps_them_out_of_pairs(services) -> None:
    """A second reward service, with the arith step check on: a right final answer reached through a false
    step is VERDICT_WRONG_STEP, counted as wrong, never chosen (and, as it states the truth, never rejected)."""
    checked = await start_reward(RewardConfig(task_step_checks={"arith": "arith_steps"}))
    lucky = "12 + 7 = 18. Final answer: 19"
    samples = [
        sample("a", 0, RIGHT),
        sample("a", 1, lucky),
        sample("a", 2, WRONG),
        sample("a", 3, "7 + 12 = 19. Final answer: 19"),
    ]
    try:
        async with RewardClient(checked.address) as client:
            scores = (await client.score([arith("a")], samples)).scores
            built = await client.build_pairs([arith("a")], samples, round=1)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.score([common_pb2.Prompt(id="x", question="What is twelve?", task="arith", answer="12")],
                                   [sample("x", 0, RIGHT)])  # fmt: skip
    finally:
        await checked.stop(0)
    assert [s.verdict for s in scores] == [
        reward_pb2.VERDICT_CORRECT, reward_pb2.VERDICT_WRONG_STEP, reward_pb2.VERDICT_WRONG, reward_pb2.VERDICT_CORRECT,
    ]  # fmt: skip
    assert (built.stats.correct, built.stats.wrong, built.stats.wrong_step) == (2, 2, 1)
    assert sorted((p.provenance.chosen_sample_index, p.provenance.rejected_sample_index) for p in built.pairs) == [
        (0, 2), (3, 2),
    ]  # fmt: skip
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith("prompts[0].question: step check 'arith_steps': no arithmetic")
    async with RewardClient(services[1].address) as client:  # the service without the check is unchanged
        unchecked = (await client.score([arith("a")], samples)).scores
    assert unchecked[1].verdict == reward_pb2.VERDICT_CORRECT


async def test_dropout_ntp_continues_the_prefix_without_the_image(services) -> None:
    _, reward = services
    scene = common_pb2.Prompt(
        id="scene", question="Describe the image.", task="describe", images=[common_pb2.Image(data=png("red"))]
    )
    no_image = common_pb2.Prompt(id="plain", question="Describe the image.", task="describe")
    chosen = "I see one red square in the middle of a white canvas. Final answer: a red square"
    samples = [sample("scene", 0, chosen), sample("scene", 1, "Red."), sample("plain", 0, chosen)]
    options = reward_pb2.PairOptions(dropout_prefix_fraction=0.5, seed=1)
    async with RewardClient(reward.address) as client:
        response = await client.build_pairs([scene, no_image], samples, round=2, options=options)
    by_index = {p.provenance.chosen_sample_index: p for p in response.pairs}
    assert set(by_index) == {0}, "a one-word answer keeps no word of prefix: nothing to continue"
    pair = by_index[0]
    prefix = "I see one red square in the middle"  # 8 of 17 words
    assert pair.source == common_pb2.PAIR_SOURCE_DROPOUT_NTP and pair.chosen == chosen
    assert pair.rejected.startswith(prefix) and pair.rejected != chosen
    assert pair.provenance.rejected_sample_index == 0 and pair.provenance.round == 2
    assert pair.prompt.images[0].data == scene.images[0].data, "the pair keeps the image for training"
    assert dict(response.skipped_prompts) == {"plain": "no_image_for_dropout_ntp"}
    assert response.stats.pairs_dropout_ntp == 1


async def test_bad_input_is_refused_and_the_service_keeps_serving(services) -> None:
    _, reward = services
    bad_letter = common_pb2.Prompt(id="mc", question="Which?", task="shapes", answer="F", choices=["red", "blue"])
    cases = [
        ([arith("a")], [sample("zzz", 0, RIGHT)], "samples[0].prompt_id: no prompt with id 'zzz'"),
        ([common_pb2.Prompt(id="a", question="Q?", task="poetry")], [sample("a", 0, RIGHT)], "prompts[0].task"),
        ([arith("a"), bad_letter], [sample("mc", 0, "Blue. Final answer: B")], "prompts[1].answer: "),
        ([arith("a")], [], "samples: must not be empty"),
    ]
    async with RewardClient(reward.address) as client:
        for prompts, samples, message in cases:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.build_pairs(prompts, samples, round=1)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert caught.value.details().startswith(message), caught.value.details()
        ok = await client.build_pairs([arith("a")], [sample("a", 0, RIGHT), sample("a", 1, WRONG)], round=1)
    assert len(ok.pairs) == 1
