"""`RewardService` over gRPC: labelling workers (Ray actors) behind one endpoint, plus DropoutNTP.

A batch is split by prompt across the workers (each prompt with all its samples, so pairs never depend
on the split); correctness pairs come back from the workers, DropoutNTP pairs from one batched
`RolloutService.Continue` call, and the label statistics are summed for the controller's round record.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import ray

from mpo.config import RewardConfig
from mpo.grading.verify import Grader
from mpo.plugins import import_roots
from mpo.services.reward import dropout_ntp
from mpo.services.reward.labelling import LabelledBatch, Tally, label_batch
from mpo.services.reward.scorer import Scorer, create_scorer
from mpo.serving.auth import Credentials
from mpo.serving.clients import RolloutClient
from mpo.serving.server import ServiceServer, bind
from mpo.serving.validation import InvalidRequest
from mpo.v1 import common_pb2, reward_pb2, reward_pb2_grpc


class LabellingWorker:
    """Deployed with `ray.remote`; returns a client error as a value (it must cross the actor boundary
    intact, with its field and code).

    Each worker builds its own `Grader` from the config it is given, importing the plug-in verifiers itself
    (path forms straight from their files; module forms by name, after appending `plugin_paths`, the sys.path
    entries where the config check found them, to its own sys.path). A plug-in that fails to load here is
    reported by `ready` at start and, should a restarted worker hit it, by every call (FAILED_PRECONDITION).
    """

    def __init__(self, config: RewardConfig, plugin_paths: list[str]) -> None:
        sys.path.extend(path for path in plugin_paths if path not in sys.path)
        self.task_step_checks = dict(config.task_step_checks)
        self.grader: Grader | None = None
        self.problem: str | None = None
        try:
            self.grader = Grader.from_config(config)
        except ValueError as exc:
            self.problem = f"a labelling worker cannot load reward.verifiers: {exc}"

    def ready(self) -> str | None:
        """None once the worker can label; otherwise why it cannot."""
        return self.problem

    def label(
        self,
        prompts: list[tuple[int, common_pb2.Prompt]],
        samples: list[common_pb2.Sample],
        options: dict[str, Any],
    ) -> LabelledBatch | InvalidRequest:
        if self.grader is None:
            return InvalidRequest("prompts", self.problem or "", grpc.StatusCode.FAILED_PRECONDITION)
        try:
            return label_batch(prompts, samples, grader=self.grader, task_step_checks=self.task_step_checks, **options)
        except InvalidRequest as error:
            return error


def _by_prompt(samples: Sequence[common_pb2.Sample]) -> dict[str, list[common_pb2.Sample]]:
    grouped: dict[str, list[common_pb2.Sample]] = {}
    for sample in samples:
        grouped.setdefault(sample.prompt_id, []).append(sample)
    return grouped


def _split(prompts: Sequence[common_pb2.Prompt], parts: int) -> list[list[tuple[int, common_pb2.Prompt]]]:
    """Contiguous groups of (position, prompt), so merged results keep request order."""
    indexed = list(enumerate(prompts))
    size = -(-len(indexed) // parts)
    return [indexed[i : i + size] for i in range(0, len(indexed), size)]


class RewardService(reward_pb2_grpc.RewardServiceServicer):
    def __init__(
        self, config: RewardConfig, workers: list[Any], rollout: RolloutClient | None, scorer: Scorer | None
    ) -> None:
        self.config, self.workers, self.rollout, self.scorer = config, workers, rollout, scorer

    async def _label(
        self, prompts: Sequence[common_pb2.Prompt], samples: Sequence[common_pb2.Sample], **options: Any
    ) -> LabelledBatch:
        groups = _split(prompts, len(self.workers))
        samples_of = _by_prompt(samples)
        calls = [
            worker.label.remote(group, [s for _, p in group for s in samples_of.get(p.id, [])], options)
            for worker, group in zip(self.workers, groups, strict=False)
        ]
        merged = LabelledBatch(scores={}, pairs=[], skipped={}, tally=Tally())
        for result in await asyncio.gather(*calls):
            if isinstance(result, InvalidRequest):
                raise result
            merged.scores.update(result.scores)
            merged.pairs.extend(result.pairs)
            merged.skipped.update(result.skipped)
            merged.tally = merged.tally + result.tally
        return merged

    async def Score(
        self, request: reward_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> reward_pb2.ScoreResponse:
        batch = await self._label(
            request.prompts, request.samples, build_pairs=False, max_pairs=1, seed=0, round_index=0
        )
        scores = [batch.scores[(s.prompt_id, s.index)] for s in request.samples]
        if self.scorer is not None:
            prompt_of = {p.id: p for p in request.prompts}
            items = [(prompt_of[s.prompt_id], s.text) for s in request.samples]
            for score, reward in zip(scores, await asyncio.to_thread(self.scorer.score, items), strict=True):
                score.reward = reward
        return reward_pb2.ScoreResponse(scores=scores, stats=batch.tally.to_proto())

    async def BuildPairs(
        self, request: reward_pb2.BuildPairsRequest, context: grpc.aio.ServicerContext
    ) -> reward_pb2.BuildPairsResponse:
        options = request.options
        max_pairs = options.max_pairs_per_prompt or self.config.max_pairs_per_prompt
        fraction = options.dropout_prefix_fraction or self.config.dropout_prefix_fraction
        batch = await self._label(
            request.prompts, request.samples, build_pairs=True, max_pairs=max_pairs, seed=options.seed,
            round_index=request.round,
        )  # fmt: skip
        samples_of = _by_prompt(request.samples)
        jobs: list[dropout_ntp.DropoutJob] = []
        for prompt in request.prompts:
            if prompt.HasField("answer"):
                continue
            planned, skipped = dropout_ntp.plan(
                prompt, samples_of.get(prompt.id, []), fraction=fraction, max_pairs=max_pairs, seed=options.seed
            )
            jobs.extend(planned)
            if skipped is not None:
                batch.skipped[prompt.id] = skipped
        if jobs and self.rollout is None:
            raise InvalidRequest(
                "prompts",
                "prompts without ground truth need DropoutNTP, and no rollout service is configured "
                "(reward.rollout_address)",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        dropout_pairs = []
        if jobs:
            assert self.rollout is not None
            dropout_pairs = await dropout_ntp.continue_without_images(
                self.rollout,
                jobs,
                max_tokens=self.config.continuation_max_tokens,
                seed=options.seed,
                round_index=request.round,
            )
        batch.tally.pairs_dropout_ntp = len(dropout_pairs)
        return reward_pb2.BuildPairsResponse(
            pairs=[*batch.pairs, *dropout_pairs], stats=batch.tally.to_proto(), skipped_prompts=batch.skipped
        )


@dataclass
class RunningReward:
    server: ServiceServer
    service: RewardService

    @property
    def address(self) -> str:
        return self.server.address

    def ready_event(self) -> dict[str, object]:
        return {"event": "serving", "service": "reward", "address": self.address, "workers": len(self.service.workers)}

    async def stop(self, grace: float | None = None) -> None:
        await self.server.stop(grace)
        if self.service.rollout is not None:
            await self.service.rollout.close()
        for worker in self.service.workers:
            ray.kill(worker)


async def start_reward(config: RewardConfig) -> RunningReward:
    """The service, serving once every labelling worker has loaded the verifiers; ValueError when one cannot."""
    remote = ray.remote(LabellingWorker).options(num_cpus=0, resources=config.worker_ray_resources, max_restarts=-1)
    roots = import_roots(config.verifiers.values())
    workers = [remote.remote(config, roots) for _ in range(config.workers)]
    problems = [problem for problem in await asyncio.gather(*(w.ready.remote() for w in workers)) if problem]
    if problems:
        for worker in workers:
            ray.kill(worker)
        raise ValueError(problems[0])
    # DropoutNTP only samples (Continue): the reward service presents the user token when there is one.
    token = Credentials.from_env(config.server.auth).for_sampling
    rollout = RolloutClient(config.rollout_address, token=token, timeout=600) if config.rollout_address else None
    service = RewardService(config, workers, rollout, await asyncio.to_thread(create_scorer, config.scorer))
    server = ServiceServer(config.server, [bind(service)], name="reward")
    await server.start()
    await server.set_ready(True)
    return RunningReward(server, service)
