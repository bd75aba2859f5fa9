"""The round's one retry policy, over real gRPC servers: every call a round makes is retried through it,
retries are bounded, and any other status fails the round at once.

The three services are small scripted servicers (the round's logic is under test, not theirs) behind the
real server plumbing, called by the controller's own clients (`ServiceClients.connect`: no transparent
retry), so each attempt the loop makes is one call the servers see.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio

from mpo.config import AuthConfig, RoundsConfig, ServerConfig
from mpo.data.records import PromptRecord
from mpo.services.controller.loop import RoundLoop
from mpo.services.controller.retry import RetryPolicy, ServiceClients
from mpo.services.controller.store import RunStore
from mpo.serving.server import ServiceServer, bind
from mpo.v1 import (
    common_pb2,
    controller_pb2,
    reward_pb2,
    reward_pb2_grpc,
    rollout_pb2,
    rollout_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
#: Retry at once, so a test's retries cost no time.
FAST = RetryPolicy(retries=1, initial_backoff_s=0.0)
PUBLISH = "Trainer.PublishWeights"


class Faults:
    """Every call the three services see, in order; `fail` answers the call with that index (0-based) with
    a status instead, and `always` every call of a method."""

    def __init__(
        self, fail: dict[int, grpc.StatusCode] | None = None, always: dict[str, grpc.StatusCode] | None = None
    ) -> None:
        self.calls: list[str] = []
        self.fail, self.always = fail or {}, always or {}

    async def enter(self, method: str, context: grpc.aio.ServicerContext) -> None:
        index = len(self.calls)
        self.calls.append(method)
        code = self.always.get(method) or self.fail.get(index)
        if code is not None:
            await context.abort(code, f"injected at call {index}")


class Rollout(rollout_pb2_grpc.RolloutServiceServicer):
    """Sample 0 of each prompt answers right, the others wrong; serves `version`."""

    def __init__(self, faults: Faults) -> None:
        self.faults, self.version = faults, 0

    async def Generate(self, request, context):
        await self.faults.enter("Rollout.Generate", context)
        samples = [
            common_pb2.Sample(
                prompt_id=p.id,
                index=i,
                text=f"Final answer: {p.answer if i == 0 else 'no'}",
                policy_version=self.version,
            )
            for p in request.prompts
            for i in range(request.sampling.n)
        ]
        return rollout_pb2.GenerateResponse(samples=samples)

    async def GetStatus(self, request, context):
        await self.faults.enter("Rollout.GetStatus", context)
        return rollout_pb2.GetStatusResponse(policy_version=self.version, ready=True)


class Reward(reward_pb2_grpc.RewardServiceServicer):
    """One pair per prompt (sample 0 over sample 1); a sample is correct when it is sample 0."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self.options: list[reward_pb2.PairOptions] = []

    async def BuildPairs(self, request, context):
        await self.faults.enter("Reward.BuildPairs", context)
        self.options.append(request.options)
        first = {(s.prompt_id, s.index): s for s in request.samples}
        pairs = [
            common_pb2.PreferencePair(
                id=f"r{request.round}-{p.id}",
                prompt=p,
                chosen=first[p.id, 0].text,
                rejected=first[p.id, 1].text,
                source=common_pb2.PAIR_SOURCE_CORRECTNESS,
                provenance=common_pb2.Provenance(policy_version=first[p.id, 0].policy_version, round=request.round),
            )
            for p in request.prompts
        ]
        stats = common_pb2.LabelStats(samples=len(request.samples), pairs_correctness=len(pairs))
        return reward_pb2.BuildPairsResponse(pairs=pairs, stats=stats)

    async def Score(self, request, context):
        await self.faults.enter("Reward.Score", context)
        verdicts = {0: reward_pb2.VERDICT_CORRECT}
        scores = [
            reward_pb2.SampleScore(
                prompt_id=s.prompt_id, index=s.index, verdict=verdicts.get(s.index, reward_pb2.VERDICT_WRONG)
            )
            for s in request.samples
        ]
        return reward_pb2.ScoreResponse(scores=scores)


class Trainer(trainer_pb2_grpc.TrainerServiceServicer):
    """Trains each pair id once (one step per call with new pairs); publishing takes exactly serving + 1."""

    def __init__(self, faults: Faults, rollout: Rollout) -> None:
        self.faults, self.rollout = faults, rollout
        self.step, self.trained = 0, set[str]()

    async def Train(self, request, context):
        await self.faults.enter("Trainer.Train", context)
        fresh = {p.id for p in request.pairs} - self.trained
        if not fresh:
            return trainer_pb2.TrainResponse(pairs_already_trained=len(request.pairs))
        self.trained |= fresh
        self.step += 1
        step = common_pb2.StepMetrics(step=self.step, loss=0.5)
        return trainer_pb2.TrainResponse(steps=[step], mean=step)

    async def Checkpoint(self, request, context):
        await self.faults.enter("Trainer.Checkpoint", context)
        return trainer_pb2.CheckpointResponse(path=f"checkpoints/step-{self.step}", step=self.step)

    async def PublishWeights(self, request, context):
        await self.faults.enter(PUBLISH, context)
        if request.version != self.rollout.version + 1:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"must be {self.rollout.version + 1}")
        self.rollout.version = request.version
        return trainer_pb2.PublishWeightsResponse(policy_version=request.version, replicas_loaded=1)

    async def GetStatus(self, request, context):
        await self.faults.enter("Trainer.GetStatus", context)
        return trainer_pb2.TrainerServiceGetStatusResponse(step=self.step, ready=True)


class Services:
    """The three scripted services on one real server, and the controller's clients of it."""

    def __init__(self, faults: Faults) -> None:
        self.faults = faults
        self.rollout = Rollout(faults)
        self.trainer, self.reward = Trainer(faults, self.rollout), Reward(faults)
        self.server = ServiceServer(
            ServerConfig(), [bind(self.rollout), bind(self.reward), bind(self.trainer)], name="round-fakes"
        )

    async def __aenter__(self) -> ServiceClients:
        await self.server.start()
        await self.server.set_ready(True)
        address = self.server.address
        self.clients = ServiceClients.connect(dict.fromkeys(("rollout", "reward", "trainer"), address), AuthConfig())
        return self.clients

    async def __aexit__(self, *exc: object) -> None:
        await self.clients.close()
        await self.server.stop(0)


CONFIG = RoundsConfig(rounds=1, prompts_per_round=2, samples_per_prompt=2, max_tokens=8, eval_prompts=2)
TRAIN = [PromptRecord(id=f"t{i}", question=f"What is {i} + 1?", answer=str(i + 1), task="arith") for i in range(4)]
HELDOUT = [PromptRecord(id=f"h{i}", question=f"What is {i} + 2?", answer=str(i + 2), task="arith") for i in range(2)]


async def run_round(faults: Faults, store_dir: Path, retry: RetryPolicy = FAST) -> list[common_pb2.RoundMetrics]:
    store = RunStore(store_dir)
    store.put_run(controller_pb2.Run(run_id="r", state=controller_pb2.RUN_STATE_RUNNING))
    async with Services(faults) as clients:
        return await RoundLoop("r", CONFIG, store, clients, TRAIN, HELDOUT, retry=retry).run()


def outcome(record: common_pb2.RoundMetrics) -> common_pb2.RoundMetrics:
    """What a round produced, without its timings."""
    kept = common_pb2.RoundMetrics()
    kept.CopyFrom(record)
    kept.ClearField("timings")
    kept.ClearField("finished_at")
    return kept


@pytest_asyncio.fixture
async def clean(tmp_path: Path) -> AsyncIterator[tuple[list[str], common_pb2.RoundMetrics]]:
    faults = Faults()
    [record] = await run_round(faults, tmp_path / "clean")
    yield faults.calls, record


async def test_every_call_of_a_round_is_retried(
    clean: tuple[list[str], common_pb2.RoundMetrics], tmp_path: Path
) -> None:
    """UNAVAILABLE injected at each call of the round in turn (base evaluation, generate, label, train,
    checkpoint, status, publish, evaluate, best checkpoint): each time the round repeats that call once
    and ends as the clean round did."""
    calls, expected = clean
    assert set(calls) == {
        "Rollout.Generate",
        "Rollout.GetStatus",
        "Reward.BuildPairs",
        "Reward.Score",
        "Trainer.Train",
        "Trainer.Checkpoint",
        "Trainer.GetStatus",
        PUBLISH,
    }, "the round makes every kind of call"
    assert expected.trained_policy_version == 1 and expected.train_steps == 1 and expected.eval_accuracy
    for index, method in enumerate(calls):
        faults = Faults(fail={index: UNAVAILABLE})
        [record] = await run_round(faults, tmp_path / f"fault-{index}")
        assert outcome(record) == outcome(expected), f"call {index} ({method})"
        repeated = Counter({method: 1})
        if method == PUBLISH:  # publishing is retried as one unit: the serving version is read again first
            repeated["Rollout.GetStatus"] += 1
        assert Counter(faults.calls) - Counter(calls) == repeated, f"call {index} ({method})"


async def test_the_round_has_blind_continuations_drawn_as_its_own_samples(tmp_path: Path) -> None:
    """DropoutNTP's two sides must differ in the image, not in how they were sampled: the labelling call
    carries the round's sampling."""
    store = RunStore(tmp_path)
    store.put_run(controller_pb2.Run(run_id="r", state=controller_pb2.RUN_STATE_RUNNING))
    config = CONFIG.model_copy(update={"temperature": 0.6, "top_k": 5})
    services = Services(Faults())
    async with services as clients:
        await RoundLoop("r", config, store, clients, TRAIN, HELDOUT, retry=FAST).run()
    [options] = services.reward.options
    assert options.dropout_sampling.temperature == pytest.approx(0.6) and options.dropout_sampling.top_k == 5


async def test_a_publish_whose_answer_was_lost_is_not_published_twice(tmp_path: Path) -> None:
    """The rollout service committed the version, the answer never came back: the retry sees it serving."""
    faults = Faults()
    store = RunStore(tmp_path / "store")
    store.put_run(controller_pb2.Run(run_id="r", state=controller_pb2.RUN_STATE_RUNNING))
    async with Services(faults) as clients:
        publish = clients.trainer.publish_weights
        lost = 0

        async def publish_then_lose_the_answer(*args: object, **kwargs: object) -> trainer_pb2.PublishWeightsResponse:
            nonlocal lost
            response = await publish(*args, **kwargs)  # type: ignore[arg-type]
            if not lost:
                lost += 1
                raise grpc.aio.AioRpcError(UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "connection lost")
            return response

        clients.trainer.publish_weights = publish_then_lose_the_answer  # type: ignore[method-assign]
        [record] = await RoundLoop("r", CONFIG, store, clients, TRAIN, HELDOUT, retry=FAST).run()
    assert lost == 1 and faults.calls.count(PUBLISH) == 1
    assert record.trained_policy_version == 1


async def test_retries_are_bounded(tmp_path: Path) -> None:
    """A service that stays unavailable fails the run after `retries` repeats, each one call on the wire
    (no second layer beneath), and leaves the committed round for the next start to finish."""
    faults = Faults(always={"Trainer.Train": UNAVAILABLE})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await run_round(faults, tmp_path / "store", RetryPolicy(retries=3, initial_backoff_s=0.0))
    assert caught.value.code() == UNAVAILABLE
    assert faults.calls.count("Trainer.Train") == 4
    assert [r.round for r in RunStore(tmp_path / "store").unfinished_rounds("r")] == [1]


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.FAILED_PRECONDITION]
)
async def test_other_codes_fail_at_once(
    code: grpc.StatusCode, clean: tuple[list[str], common_pb2.RoundMetrics], tmp_path: Path
) -> None:
    calls, _ = clean
    train = calls.index("Trainer.Train")
    faults = Faults(fail={train: code})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await run_round(faults, tmp_path / "store", RetryPolicy(retries=5, initial_backoff_s=0.0))
    assert caught.value.code() == code
    assert faults.calls == calls[: train + 1], "nothing after the refused call, and no repeat of it"


def test_backoff_doubles_up_to_its_cap() -> None:
    policy = RetryPolicy()
    assert [policy.backoff(retry) for retry in range(6)] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert policy.retryable == {grpc.StatusCode.UNAVAILABLE}
