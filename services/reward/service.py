"""`RewardService` over gRPC: labelling workers (Ray actors) behind one endpoint, plus DropoutNTP.

A request is grouped by prompt once (`labelling.group_samples`) and its groups are split across the
workers (each prompt with all its samples, so pairs never depend on the split). `Score` has them judged
(`labelling.score`); `BuildPairs` has them paired (`labelling.build_pairs`: correctness pairs for prompts
with ground truth) and sends the prompts without it to DropoutNTP, one batched `RolloutService.Continue`
call. The label statistics are summed for the controller's round record.
"""

from __future__ import annotations

import asyncio
import functools
import operator
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import ray

from mpo.config import RewardConfig
from mpo.grading.mentions import MENTION_COUNTERS
from mpo.grading.verify import Grader
from mpo.pairs import named_prompts
from mpo.plugins import import_roots
from mpo.services.reward import dropout_ntp, labelling
from mpo.services.reward.labelling import PairedBatch, PromptGroup, ScoredBatch, group_samples
from mpo.services.reward.scorer import Scorer, create_scorer
from mpo.serving.clients import RolloutClient
from mpo.serving.handle import ServerHandle, connect, start_server
from mpo.serving.validation import InvalidRequest
from mpo.v1 import common_pb2, reward_pb2, reward_pb2_grpc

Batch = TypeVar("Batch", ScoredBatch, PairedBatch)


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

    def score(self, groups: list[PromptGroup]) -> ScoredBatch | InvalidRequest:
        return self._run(labelling.score, groups)

    def build_pairs(
        self, groups: list[PromptGroup], max_pairs: int, seed: int, round_index: int
    ) -> PairedBatch | InvalidRequest:
        return self._run(labelling.build_pairs, groups, max_pairs=max_pairs, seed=seed, round_index=round_index)

    def _run(self, label: Callable[..., Batch], groups: list[PromptGroup], **options: Any) -> Batch | InvalidRequest:
        if self.grader is None:
            return InvalidRequest("prompts", self.problem or "", grpc.StatusCode.FAILED_PRECONDITION)
        try:
            return label(groups, grader=self.grader, task_step_checks=self.task_step_checks, **options)
        except InvalidRequest as error:
            return error


def _split(groups: list[PromptGroup], parts: int) -> list[list[PromptGroup]]:
    """Contiguous runs of groups, so merged results keep request order."""
    size = max(1, -(-len(groups) // parts))
    return [groups[i : i + size] for i in range(0, len(groups), size)]


class RewardService(reward_pb2_grpc.RewardServiceServicer):
    def __init__(
        self, config: RewardConfig, workers: list[Any], rollout: RolloutClient | None, scorer: Scorer | None
    ) -> None:
        self.config, self.workers, self.rollout, self.scorer = config, workers, rollout, scorer
        self.mention_counters = {task: MENTION_COUNTERS[name] for task, name in config.task_mention_counters.items()}

    async def _on_workers(self, empty: Batch, method: str, groups: list[PromptGroup], *args: Any) -> Batch:
        """`method` of the workers over `groups`, split among them; their batches added up in order."""
        calls = [
            getattr(worker, method).remote(part, *args)
            for worker, part in zip(self.workers, _split(groups, len(self.workers)), strict=False)
        ]
        results = await asyncio.gather(*calls)
        for result in results:
            if isinstance(result, InvalidRequest):
                raise result
        return functools.reduce(operator.add, results, empty)

    async def Score(
        self, request: reward_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> reward_pb2.ScoreResponse:
        groups = group_samples(request.prompts, request.samples)
        batch = await self._on_workers(ScoredBatch(), "score", groups)
        score_of = {(score.prompt_id, score.index): score for score in batch.scores}
        scores = [score_of[(s.prompt_id, s.index)] for s in request.samples]
        if self.scorer is not None:
            prompt_of = {group.prompt.id: group.prompt for group in groups}
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
        finished_only = options.dropout_finished_only or self.config.dropout_ntp_finished_only
        unterminated = options.dropout_unterminated or self.config.dropout_ntp_unterminated
        match_length = options.dropout_match_length or self.config.dropout_ntp_match_length
        if match_length and (finished_only or unterminated):
            raise InvalidRequest(
                "options.dropout_match_length",
                "does not go with finished-only or unterminated DropoutNTP pairs (asked for here or set in the "
                "service's reward.dropout_ntp_finished_only / dropout_ntp_unterminated): each is its own way of "
                "matching a pair's sides",
            )
        groups = group_samples(request.prompts, request.samples)
        batch = await self._on_workers(PairedBatch(), "build_pairs", groups, max_pairs, options.seed, request.round)
        jobs: list[dropout_ntp.DropoutJob] = []
        for group in groups:
            if group.prompt.HasField("answer"):
                continue
            planned, skipped = dropout_ntp.plan(
                group.prompt, group.samples, fraction=fraction, max_pairs=max_pairs, seed=options.seed
            )
            jobs.extend(planned)
            if skipped is not None:
                batch.skipped[group.prompt.id] = skipped
        like = options.dropout_sampling if options.HasField("dropout_sampling") else None
        sampling = dropout_ntp.blind_sampling(like, max_tokens=self.config.continuation_max_tokens, seed=options.seed)
        blind = await self._continue(
            jobs,
            sampling=sampling,
            round_index=request.round,
            finished_only=finished_only,
            unterminated=unterminated,
            match_length=match_length,
        )
        batch.tally.pairs_dropout_ntp, batch.tally.dropout_ntp_cut = len(blind.pairs), blind.cut
        batch.tally.dropout_ntp_fewer_mentions = blind.fewer_mentions
        pairs = [*batch.pairs, *blind.pairs]
        return reward_pb2.BuildPairsResponse(
            pairs=pairs,
            prompts=named_prompts(request.prompts, pairs),  # pairs name their prompt: its images travel once
            stats=batch.tally.to_proto(),
            skipped_prompts=batch.skipped,
        )

    async def _continue(
        self,
        jobs: list[dropout_ntp.DropoutJob],
        *,
        sampling: common_pb2.SamplingParams,
        round_index: int,
        finished_only: bool,
        unterminated: bool,
        match_length: bool,
    ) -> dropout_ntp.BlindPairs:
        """DropoutNTP's pairs from the rollout service, guarded by the tasks' mention counters; FAILED_PRECONDITION
        when jobs need one and none is set. A failed Continue keeps its status code (UNAVAILABLE while a
        replica restarts), not INTERNAL."""
        if not jobs:
            return dropout_ntp.BlindPairs()
        if self.rollout is None:
            raise InvalidRequest(
                "prompts",
                "prompts without ground truth need DropoutNTP, and no rollout service is configured "
                "(reward.rollout_address)",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        try:
            return await dropout_ntp.continue_without_images(
                self.rollout,
                jobs,
                sampling=sampling,
                round_index=round_index,
                finished_only=finished_only,
                unterminated=unterminated,
                match_length=match_length,
                mention_counters=self.mention_counters,
            )
        except grpc.aio.AioRpcError as error:  # the rollout's own status, so the round's retry policy sees it
            raise InvalidRequest(
                "prompts", f"the rollout service's Continue failed: {error.details()}", error.code()
            ) from error


@dataclass
class RunningReward(ServerHandle):
    service: RewardService
    name = "reward"

    def ready_details(self) -> dict[str, object]:
        return {"workers": len(self.service.workers)}

    async def release(self) -> None:
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
    rollout = (
        connect(RolloutClient, config.rollout_address, config.server.auth, timeout=600, sampling_only=True)
        if config.rollout_address
        else None
    )
    service = RewardService(config, workers, rollout, await asyncio.to_thread(create_scorer, config.scorer))
    return RunningReward(await start_server(config.server, service, name="reward"), service)
