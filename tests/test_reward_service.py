"""RewardService end to end: labelling workers in Ray, DropoutNTP against the real rollout service
(transformers backend, tiny image-text model), the model-based scorer, plug-in verifiers written outside the
package (run in every labelling worker), and bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
import ray
from transformers import AutoTokenizer

from mpo.config import RequestLimits, RewardConfig, RolloutConfig, ScorerConfig, ServerConfig
from mpo.grading.mentions import MENTION_COUNTERS
from mpo.models.tiny import build_image_text_model, build_text_model
from mpo.services.reward.dropout_ntp import same_length
from mpo.services.reward.service import RunningReward, start_reward
from mpo.services.rollout.server import RunningRollout, start_rollout
from mpo.serving.clients import RewardClient, RolloutClient
from mpo.v1 import common_pb2, reward_pb2, rollout_pb2
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
    assert list(first.prompts) == [prompts[0]], "the one prompt with pairs, once, however many pairs name it"
    for pair in first.pairs:
        assert pair.source == common_pb2.PAIR_SOURCE_CORRECTNESS and pair.prompt_id == "mixed"
        assert not pair.HasField("prompt"), "pairs name their prompt instead of carrying it"
        assert pair.chosen.endswith("Final answer: 19") and not pair.rejected.endswith("Final answer: 19")
        assert (pair.provenance.round, pair.provenance.policy_version, pair.provenance.verifier) == (5, 3, "numeric")
        assert pair.provenance.chosen_sample_index < 3 <= pair.provenance.rejected_sample_index
    assert dict(first.skipped_prompts) == {"easy": "all_correct", "hard": "all_wrong"}
    assert (first.stats.prompts_all_correct, first.stats.prompts_all_wrong, first.stats.pairs_correctness) == (1, 1, 4)


async def test_step_check_labels_lucky_answers_wrong_and_keeps_them_out_of_pairs(services) -> None:
    """A second reward service, with the arith and shapes step checks on: a right final answer reached through
    a false step is VERDICT_WRONG_STEP, counted as wrong and never chosen. An arith one states the truth, so
    it is never rejected either; a shapes option letter is not searched for, so a lucky shapes answer is the
    rejected side against one that derives the same answer."""
    checked = await start_reward(RewardConfig(task_step_checks={"arith": "arith_steps", "shapes": "shapes_steps"}))
    lucky = "12 + 7 = 18. Final answer: 19"
    samples = [
        sample("a", 0, RIGHT),
        sample("a", 1, lucky),
        sample("a", 2, WRONG),
        sample("a", 3, "7 + 12 = 19. Final answer: 19"),
    ]
    question = "Are there more circles than squares? (A) yes (B) no"
    shapes = common_pb2.Prompt(id="s", question=question, task="shapes", answer="B", choices=["yes", "no"])
    shapes_samples = [
        sample("s", 0, "I see a red circle and a blue square. Circles: 1. Squares: 1. 1 is not more than 1, so no, "
                       "option (B).\nFinal answer: B"),
        sample("s", 1, "Squares: 1. Circles: 1. 1 is more than 1, so yes, option (B).\nFinal answer: B"),
        sample("s", 2, "Circles: 2. Squares: 1. 2 is more than 1, so yes, option (A).\nFinal answer: A"),
    ]  # fmt: skip
    try:
        async with RewardClient(checked.address) as client:
            scores = (await client.score([arith("a"), shapes], samples + shapes_samples)).scores
            built = await client.build_pairs([arith("a")], samples, round=1)
            built_shapes = await client.build_pairs([shapes], shapes_samples, round=1)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.score([common_pb2.Prompt(id="x", question="What is twelve?", task="arith", answer="12")],
                                   [sample("x", 0, RIGHT)])  # fmt: skip
            with pytest.raises(grpc.aio.AioRpcError) as caught_shapes:
                await client.score([common_pb2.Prompt(id="y", question="Describe it.", task="shapes", answer="2")],
                                   [sample("y", 0, "That is 2. Final answer: 2")])  # fmt: skip
    finally:
        await checked.stop(0)
    assert [s.verdict for s in scores] == [
        reward_pb2.VERDICT_CORRECT, reward_pb2.VERDICT_WRONG_STEP, reward_pb2.VERDICT_WRONG, reward_pb2.VERDICT_CORRECT,
        reward_pb2.VERDICT_CORRECT, reward_pb2.VERDICT_WRONG_STEP, reward_pb2.VERDICT_WRONG,
    ]  # fmt: skip
    assert (built.stats.correct, built.stats.wrong, built.stats.wrong_step) == (2, 2, 1)
    assert sorted((p.provenance.chosen_sample_index, p.provenance.rejected_sample_index) for p in built.pairs) == [
        (0, 2), (3, 2),
    ]  # fmt: skip
    shapes_pairs = sorted(
        (p.provenance.chosen_sample_index, p.provenance.rejected_sample_index) for p in built_shapes.pairs
    )
    assert shapes_pairs == [(0, 1), (0, 2)], "the lucky answer is rejected against the one that derives it"
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith("prompts[0].question: step check 'arith_steps': no arithmetic")
    assert caught_shapes.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught_shapes.value.details() or "").startswith(
        "prompts[0].question: step check 'shapes_steps': not a shapes question"
    )
    async with RewardClient(services[1].address) as client:  # the service without the check is unchanged
        unchecked = (await client.score([arith("a"), shapes], samples + shapes_samples)).scores
    assert [unchecked[1].verdict, unchecked[5].verdict] == [reward_pb2.VERDICT_CORRECT, reward_pb2.VERDICT_CORRECT]


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
    assert pair.prompt_id == "scene" and list(response.prompts) == [scene], "the image travels once, for training"
    assert dict(response.skipped_prompts) == {"plain": "no_image_for_dropout_ntp"}
    assert response.stats.pairs_dropout_ntp == 1


async def test_a_dropout_ntp_rejected_answer_runs_no_longer_than_its_chosen_one(services) -> None:
    """The blind continuation gets only what the chosen answer spent after the prefix. With more room (the
    service's 12 tokens, all it has when a sample carries no token ids) it runs past the chosen answer's
    length, and the pair would prefer the shorter answer rather than the one that saw the image. The same
    seed draws the same tokens, so the held rejected answer is the free continuation's first tokens."""
    rollout, reward = services
    tokenizer = AutoTokenizer.from_pretrained(rollout.service.config.model)
    scene = common_pb2.Prompt(
        id="scene", question="Describe the image.", task="describe", images=[common_pb2.Image(data=png("red"))]
    )
    chosen, prefix = "I see one red square in the middle of it.", "I see one red square in the middle"
    chosen_tokens = tokenizer(chosen, add_special_tokens=False).input_ids
    measured = common_pb2.Sample(prompt_id="scene", index=0, text=chosen, token_ids=chosen_tokens, policy_version=3)
    options = reward_pb2.PairOptions(dropout_prefix_fraction=0.9, seed=1)  # 8 of 10 words: little left
    async with RewardClient(reward.address) as client:
        (free,) = (await client.build_pairs([scene], [sample("scene", 0, chosen)], round=1, options=options)).pairs
        held_response = await client.build_pairs([scene], [measured], round=1, options=options)
    (held,) = held_response.pairs
    assert held_response.stats.dropout_ntp_cut == 1, "the held continuation was cut: counted, and kept"
    async with RolloutClient(rollout.address) as client:  # what the reward service asked for, unbounded
        continuation = rollout_pb2.Continuation(prompt=scene, prefix=prefix, drop_images=True)
        sampling = common_pb2.SamplingParams(n=1, temperature=1.0, max_tokens=12, seed=1)
        (blind,) = (await client.continue_prefixes([continuation], sampling)).samples
    left = len(chosen_tokens) - len(tokenizer(prefix, add_special_tokens=False).input_ids)
    assert 0 < left < len(blind.token_ids), "the free continuation must run past the chosen answer's length"
    assert free.rejected == prefix + blind.text
    assert held.rejected == prefix + tokenizer.decode(list(blind.token_ids)[:left], skip_special_tokens=True)

    # That held continuation was cut unfinished: kept only when finished continuations are not asked for.
    finished_only = reward_pb2.PairOptions(dropout_prefix_fraction=0.9, seed=1, dropout_finished_only=True)
    async with RewardClient(reward.address) as client:
        response = await client.build_pairs([scene], [measured], round=1, options=finished_only)
    assert not response.pairs and response.stats.pairs_dropout_ntp == 0 and response.stats.dropout_ntp_cut == 1

    # Unterminated: both sides cut to the shorter one's words, marked so neither trains its end of turn.
    # Unheld, with seed 2 the random model's 12 tokens hold spaces: the cut leaves the sides different.
    free_sample = sample("scene", 0, chosen)
    half = reward_pb2.PairOptions(dropout_prefix_fraction=0.5, seed=2)
    unterminated = reward_pb2.PairOptions(dropout_prefix_fraction=0.5, seed=2, dropout_unterminated=True)
    async with RewardClient(reward.address) as client:
        (whole,) = (await client.build_pairs([scene], [free_sample], round=1, options=half)).pairs
        (same,) = (await client.build_pairs([scene], [free_sample], round=1, options=unterminated)).pairs
    assert same.unterminated and not whole.unterminated
    assert (same.chosen, same.rejected) == same_length(whole.chosen, whole.rejected)


async def test_a_matched_dropout_ntp_continuation_runs_to_its_chosen_answers_length(services) -> None:
    """`dropout_match_length`: the blind continuation may not end before its chosen answer did. A stop string
    in the round's sampling (here one that the greedy continuation writes early) ends it when unmatched; the
    matched one runs on and is cut at the chosen answer's length (where the random model's greedy choice is
    an end of turn, the floor makes it write on, so the matched side is the free one's only up to the stop).
    Asked for with unterminated pairs it is refused, naming the field."""
    rollout, reward = services
    tokenizer = AutoTokenizer.from_pretrained(rollout.service.config.model)
    scene = common_pb2.Prompt(
        id="scene", question="Describe the image.", task="describe", images=[common_pb2.Image(data=png("red"))]
    )
    chosen, prefix = "I see one red square in the middle of it.", "I see one red square"  # half of 10 words
    chosen_tokens = tokenizer(chosen, add_special_tokens=False).input_ids
    left = len(chosen_tokens) - len(tokenizer(prefix, add_special_tokens=False).input_ids)
    async with RolloutClient(rollout.address) as client:
        continuation = rollout_pb2.Continuation(prompt=scene, prefix=prefix, drop_images=True)
        greedy = common_pb2.SamplingParams(n=1, temperature=0.0, max_tokens=left)
        (blind,) = (await client.continue_prefixes([continuation], greedy)).samples
    assert len(blind.token_ids) == left > 2, "the greedy continuation must run to the chosen answer's length"
    stop = next(text for t in blind.token_ids[1 : left - 1] if (text := tokenizer.decode([t]).strip()))
    measured = common_pb2.Sample(prompt_id="scene", index=0, text=chosen, token_ids=chosen_tokens, policy_version=3)
    like = common_pb2.SamplingParams(temperature=0.0, stop=[stop])
    options = {"dropout_prefix_fraction": 0.5, "seed": 1, "dropout_sampling": like}
    async with RewardClient(reward.address) as client:
        free = await client.build_pairs([scene], [measured], round=1, options=reward_pb2.PairOptions(**options))
        matched_options = reward_pb2.PairOptions(**options, dropout_match_length=True)
        matched = await client.build_pairs([scene], [measured], round=1, options=matched_options)
        both = reward_pb2.PairOptions(**options, dropout_match_length=True, dropout_unterminated=True)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.build_pairs([scene], [measured], round=1, options=both)
    (stopped,), (held,) = free.pairs, matched.pairs
    assert stopped.rejected == prefix + blind.text[: blind.text.find(stop)] and free.stats.dropout_ntp_cut == 0
    assert held.rejected.startswith(stopped.rejected + stop), "the matched continuation runs on past the stop"
    assert matched.stats.dropout_ntp_cut == 1 and not held.unterminated
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("options.dropout_match_length: does not go with")


async def test_a_mention_counter_keeps_only_the_dropout_ntp_pairs_whose_blind_side_names_as_much(services) -> None:
    """A reward service with describe mapped to the scene-object counter builds the unguarded service's
    pairs (same rollout, same seed: the same continuations) less the one whose blind side names fewer shapes
    than its chosen side, and counts it. The other's chosen shape lies in its prefix, so its blind side
    names at least as many."""
    rollout, reward = services
    scene = common_pb2.Prompt(
        id="scene", question="Describe the image.", task="describe", images=[common_pb2.Image(data=png("red"))]
    )
    three = "I see a red circle and a blue square and a green triangle."  # prefix "I see a red circle"
    one = "A red circle is all I see in it."  # prefix "A red circle"
    samples = [sample("scene", 0, three), sample("scene", 1, one)]
    options = reward_pb2.PairOptions(dropout_prefix_fraction=0.4, seed=1)
    guarded = await start_reward(
        RewardConfig(
            rollout_address=rollout.address,
            continuation_max_tokens=12,
            task_mention_counters={"describe": "scene_objects"},
        )
    )
    try:
        async with RewardClient(reward.address) as client:
            every = await client.build_pairs([scene], samples, round=1, options=options)
        async with RewardClient(guarded.address) as client:
            kept = await client.build_pairs([scene], samples, round=1, options=options)
    finally:
        await guarded.stop(0)
    counter = MENTION_COUNTERS["scene_objects"]
    named = [(counter.count(p.chosen), counter.count(p.rejected)) for p in every.pairs]
    assert len(named) == 2 and named[0][0] == 3 > named[0][1] and named[1][1] >= named[1][0] == 1
    assert list(kept.pairs) == [every.pairs[1]] and kept.stats.pairs_dropout_ntp == 1
    assert kept.stats.dropout_ntp_fewer_mentions == 1 and every.stats.dropout_ntp_fewer_mentions == 0


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
        for meta, reason in [
            ('{"scene": [' + "0," * 40_000 + "0]}", "at most 65536 bytes (max_meta_bytes), got 80014"),
            ('{"a":' + "[" * 20_000 + "]" * 20_000 + "}", "nested more than 32 deep"),
            ('{"scene": NaN}', "NaN is not a JSON number"),
        ]:
            hostile = common_pb2.Prompt(id="m", question="Q?", task="arith", answer="1", meta_json=meta)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.build_pairs([arith("a"), hostile], [sample("a", 0, RIGHT)], round=1)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert caught.value.details() == f"prompts[1].meta_json: {reason}"
        hot = reward_pb2.PairOptions(dropout_sampling=common_pb2.SamplingParams(temperature=float("inf")))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await client.build_pairs([arith("a")], [sample("a", 0, RIGHT)], round=1, options=hot)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith("options.dropout_sampling.temperature"), caught.value.details()
        ok = await client.build_pairs([arith("a")], [sample("a", 0, RIGHT), sample("a", 1, WRONG)], round=1)
    assert len(ok.pairs) == 1


PLUGINS = """
import json
import os
from pathlib import Path

CALLS = Path({calls!r})


def _seen(record):
    (CALLS / f"{{os.getpid()}}-{{record.task}}-{{record.id}}").touch()


def words(response, record):
    \"\"\"Right when the truth is one of the response's words: the whole response, no final answer needed.\"\"\"
    _seen(record)
    return record.answer in response.split()


def overlap(response, record):
    \"\"\"A score: the share of the truth's words in the response.\"\"\"
    _seen(record)
    truth = record.answer.split()
    return sum(word in response.split() for word in truth) / len(truth)


def in_the_scene(response, record):
    \"\"\"Right when the response names the first object's colour of the scene the prompt's meta holds.\"\"\"
    return record.meta["scene"][0]["colour"] in response.split()


def fragile(response, record):
    if "boom" in response:
        raise ZeroDivisionError("boom")
    return "maybe" if "maybe" in response else True
"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def plugged(services, tmp_path_factory: pytest.TempPathFactory) -> tuple[RunningReward, Path, Path]:
    """A reward service with 2 labelling workers and plug-ins from a directory outside the package: by path,
    and by module name through a sys.path entry this process added after Ray started its workers' pool."""
    root = tmp_path_factory.mktemp("plugins")
    calls = root / "calls"
    for folder in (calls, root / "by_path", root / "by_module"):
        folder.mkdir()
    source = PLUGINS.format(calls=str(calls))
    path_file = root / "by_path" / "path_verifiers.py"
    path_file.write_text(source)
    (root / "by_module" / "reward_module_verifiers.py").write_text(source)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.syspath_prepend(str(root / "by_module"))
        config = RewardConfig(
            workers=2,
            task_verifiers={"arith": "numeric"},
            verifiers={
                "words": f"{path_file}:words",
                "overlap": "reward_module_verifiers:overlap",
                "fragile": "reward_module_verifiers:fragile",
                "scene": f"{path_file}:in_the_scene",
            },
            correct_threshold=0.6,
            answer_pattern=r"ANSWER: (\S+)",
            server=ServerConfig(limits=RequestLimits(known_tasks=["arith", "words", "overlap", "fragile", "scene"])),
        )
        reward = await start_reward(config)
    yield reward, path_file, calls
    await reward.stop(0)


def prompt(prompt_id: str, task: str, answer: str) -> common_pb2.Prompt:
    return common_pb2.Prompt(id=prompt_id, question="Which one?", task=task, answer=answer)


async def test_plugin_verifiers_judge_in_every_labelling_worker(plugged) -> None:
    reward, path_file, calls = plugged
    # Split over the 2 workers as [words, arith] and [overlap]: each worker runs a plug-in.
    prompts = [prompt("w", "words", "blue"), prompt("a", "arith", "19"), prompt("o", "overlap", "red green blue")]
    samples = [
        sample("w", 0, "It is blue"), sample("w", 1, "It is red"), sample("w", 2, "I am not sure"),
        sample("a", 0, "12 + 7 = 19. ANSWER: 19"), sample("a", 1, "12 + 7 = 20. ANSWER: 20"),
        sample("a", 2, "12 + 7 = 19, so \\boxed{19}"),
        sample("o", 0, "red and green"), sample("o", 1, "red"), sample("o", 2, "blue, green, red"),
    ]  # fmt: skip
    async with RewardClient(reward.address) as client:
        scored = await client.score(prompts, samples)
        built = await client.build_pairs(prompts, samples, round=3)
    by_path, by_module = f"{path_file}:words", "reward_module_verifiers:overlap"
    verdicts = [(s.prompt_id, s.index, s.verdict, s.extracted_answer, s.verifier) for s in scored.scores]
    correct, wrong = reward_pb2.VERDICT_CORRECT, reward_pb2.VERDICT_WRONG
    # "o": 2/3 of the truth's words >= 0.6 is correct; "blue," and "green," are not its words, so only 1/3
    assert verdicts == [
        ("w", 0, correct, "", by_path), ("w", 1, wrong, "", by_path), ("w", 2, wrong, "", by_path),
        ("a", 0, correct, "19", "numeric"), ("a", 1, wrong, "20", "numeric"), ("a", 2, correct, "19", "numeric"),
        ("o", 0, correct, "", by_module), ("o", 1, wrong, "", by_module), ("o", 2, wrong, "", by_module),
    ]  # fmt: skip
    stats = scored.stats
    assert (stats.correct, stats.wrong, stats.unparsable) == (4, 5, 0), "plug-ins judge; nothing is unparsable"
    assert dict(stats.accuracy_by_task) == pytest.approx({"words": 1 / 3, "arith": 2 / 3, "overlap": 1 / 3})
    pairs = {
        (p.prompt_id, p.provenance.chosen_sample_index, p.provenance.rejected_sample_index): p for p in built.pairs
    }
    assert sorted(pairs) == [("a", 0, 1), ("a", 2, 1), ("o", 0, 1), ("o", 0, 2), ("w", 0, 1), ("w", 0, 2)]
    assert pairs[("w", 0, 2)].provenance.verifier == by_path and pairs[("o", 0, 2)].provenance.verifier == by_module
    assert built.stats.pairs_correctness == 6
    seen = [name.split("-") for name in os.listdir(calls)]
    workers = {pid for pid, _, _ in seen}
    assert len(workers) == 2 and str(os.getpid()) not in workers, "each worker ran its prompts' plug-in"
    assert {(task, prompt_id) for _, task, prompt_id in seen} == {("words", "w"), ("overlap", "o")}


async def test_a_plugin_verifier_reads_the_prompts_meta(plugged) -> None:
    """`Prompt.meta_json` reaches the verifier as the record's `meta`, in Score and in BuildPairs: the two
    prompts ask the same question, and only their scenes tell which answer is right."""
    reward, _, _ = plugged
    scenes = [[{"colour": "teal", "shape": "circle"}], [{"colour": "olive", "shape": "square"}]]
    prompts = [
        common_pb2.Prompt(
            id=f"s{i}", question="Which colour?", task="scene", answer="?", meta_json=json.dumps({"scene": scene})
        )
        for i, scene in enumerate(scenes)
    ]
    samples = [sample(f"s{i}", j, text) for i in (0, 1) for j, text in enumerate(["It is teal", "It is olive"])]
    async with RewardClient(reward.address) as client:
        scored = await client.score(prompts, samples)
        built = await client.build_pairs(prompts, samples, round=1)
    correct = [(s.prompt_id, s.index) for s in scored.scores if s.verdict == reward_pb2.VERDICT_CORRECT]
    assert correct == [("s0", 0), ("s1", 1)]
    chosen = {(p.prompt_id, p.provenance.chosen_sample_index, p.provenance.rejected_sample_index) for p in built.pairs}
    assert chosen == {("s0", 0, 1), ("s1", 1, 0)}
    assert [p.meta_json for p in built.prompts] == [p.meta_json for p in prompts], "echoed for the trainer as sent"


async def test_a_failing_plugin_is_failed_precondition_and_the_service_keeps_serving(plugged) -> None:
    reward, _, _ = plugged
    fragile = [prompt("ok", "fragile", "x"), prompt("f", "fragile", "x")]
    cases = [
        ("it went boom", "prompts[1]: verifier 'reward_module_verifiers:fragile' of task 'fragile' raised "
         "ZeroDivisionError: boom (sample 0)"),
        ("maybe so", "prompts[1]: verifier 'reward_module_verifiers:fragile' of task 'fragile' returned 'maybe' "
         "(str); a verifier returns a bool or a number in [0, 1] (sample 0)"),
    ]  # fmt: skip
    async with RewardClient(reward.address) as client:
        for text, message in cases:
            for call in (client.score, lambda p, s: client.build_pairs(p, s, round=1)):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call(fragile, [sample("ok", 0, "fine"), sample("f", 0, text)])
                assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
                assert caught.value.details() == message
        after = await client.score(fragile, [sample("ok", 0, "fine"), sample("f", 0, "fine too")])
    assert [s.verdict for s in after.scores] == [reward_pb2.VERDICT_CORRECT] * 2


async def test_a_worker_that_cannot_load_a_plugin_stops_the_start(services, tmp_path: Path) -> None:
    """The config check loads the file here; the workers load it themselves, and it is gone by then."""
    path_file = tmp_path / "vanishing.py"
    path_file.write_text("def check(response, record):\n    return True\n")
    config = RewardConfig(workers=2, verifiers={"describe": f"{path_file}:check"}, task_verifiers={"arith": "numeric"})
    path_file.unlink()
    with pytest.raises(ValueError, match=r"^a labelling worker cannot load reward.verifiers: no such file: "):
        await start_reward(config)
