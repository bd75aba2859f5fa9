"""The online round: rollout → labelling → commit → train → publish → evaluate → record.

Every step talks to a service over gRPC (the typed clients), and what must survive a crash is in the
`RunStore` before the next step relies on it: the round's pairs are committed before the trainer sees
them, and the trainer is handed exactly the committed pairs, read back from the store. A round that was
committed but not finished (the controller died in between) is finished first when the run continues;
the trainer skips pair ids it has already trained, so nothing is trained twice. Every service call of a
round goes through the run's `RetryPolicy` (retry.py), the only layer that repeats it.

Sync and async mode are one pipeline: a *producer* samples, labels and commits rounds, a *consumer*
trains, publishes, evaluates and records them in order. Round r may be produced once round
r − 1 − bound is finished, with bound 0 in sync mode (each round samples the weights the previous round
published) and `max_staleness` in async mode (rollout of round k+1 overlaps training of round k).
Offline MPO (`sample_from: base`) is the same pipeline with the publishing held back to the last round,
so every round samples the base policy.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2

from mpo.config import PromptConfig, RoundsConfig
from mpo.data.meta import encode_meta
from mpo.data.records import PromptRecord
from mpo.failpoints import failpoint
from mpo.grading.degenerate import judge_degeneracy
from mpo.grading.hallucination import DescriptionCheck, described_scenes, judge_description, summarize
from mpo.services.controller.retry import RetryPolicy, ServiceClients
from mpo.services.controller.run_control import RunControl
from mpo.services.controller.scheduling import PromptSampler
from mpo.services.controller.store import RunStore
from mpo.serving.health_check import serving_status
from mpo.v1 import common_pb2, reward_pb2, trainer_pb2

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How long a run waits, when it starts or resumes, for its services to serve: on a cluster they start
#: as a separate job from the controller's, and a large model takes minutes to load.
SERVICES_START_TIMEOUT_S = 3600.0
#: Verdicts whose final answer matches the ground truth (a failed step check still got the answer).
_FINAL_ANSWER_RIGHT = (reward_pb2.VERDICT_CORRECT, reward_pb2.VERDICT_WRONG_STEP)

_TRANSPORTS = {
    "grpc_stream": trainer_pb2.WEIGHT_TRANSPORT_GRPC_STREAM,
    "shared_storage": trainer_pb2.WEIGHT_TRANSPORT_SHARED_STORAGE,
}


@dataclass(frozen=True)
class HeldOut:
    """One held-out evaluation, per task: greedy accuracy (prompts with ground truth), the share of
    degenerate answers, and hallucination in descriptions of scenes (open-ended prompts with a scene)."""

    accuracy: dict[str, float]
    degenerate: dict[str, float]
    hallucination: dict[str, common_pb2.Hallucination]


def to_prompt(record: PromptRecord) -> common_pb2.Prompt:
    """A data-set record as it travels: images inline, so no service needs the controller's files, and its
    `meta` as JSON for the reward service's verifiers."""
    prompt = common_pb2.Prompt(
        id=record.id,
        question=record.question,
        task=record.task,
        choices=record.choices or [],
        meta_json=encode_meta(record.meta),
    )
    if record.answer is not None:
        prompt.answer = record.answer
    for path in record.images:
        prompt.images.add(data=path.read_bytes())
    return prompt


@contextmanager
def _timed(timings: Counter[str], name: str) -> Iterator[None]:
    """Adds the block's wall time to `timings[name]`."""
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[name] += time.perf_counter() - started


#: Called as (round, phase) when a round enters a phase: generate, label, commit, train, publish, eval,
#: record; and "done" once its record is stored.
PhaseCallback = Callable[[int, str], None]


@dataclass
class _Produced:
    partial: common_pb2.RoundMetrics
    timings: Counter[str]
    started: float


class RoundLoop:
    def __init__(
        self,
        run_id: str,
        config: RoundsConfig,
        store: RunStore,
        clients: ServiceClients,
        train: Sequence[PromptRecord],
        heldout: Sequence[PromptRecord],
        *,
        on_round: Callable[[common_pb2.RoundMetrics], None] | None = None,
        on_phase: PhaseCallback | None = None,
        control: RunControl | None = None,
        prompt: PromptConfig | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        """`retry`: how every service call of a round is repeated; default `rounds.retries` times with the
        standard backoff (`RetryPolicy`)."""
        self.run_id, self.config, self.store, self.clients = run_id, config, store, clients
        self.retry = retry or RetryPolicy(retries=config.retries)
        self.prompt = prompt or PromptConfig()  # how the stored pairs' conversations read
        self.on_round, self.on_phase = on_round, on_phase
        self.control = control or RunControl()
        self.sampler = PromptSampler(train, per_round=config.prompts_per_round, seed=config.seed, mix=config.task_mix)
        self.heldout = [to_prompt(r) for r in heldout[: config.eval_prompts]]
        #: Scenes of the held-out prompts judged for hallucination, by prompt id.
        self.scenes = described_scenes(heldout[: config.eval_prompts])

    @property
    def staleness_bound(self) -> int:
        return self.config.max_staleness if self.config.mode == "async" else 0

    async def run(self) -> list[common_pb2.RoundMetrics]:
        """Finish rounds left unfinished, then run the rest up to `config.rounds` (or until stopped);
        returns the records of this call."""
        records = []
        await self._wait_for_services()
        await self._evaluate_base()
        for partial in self.store.unfinished_rounds(self.run_id):
            log.info("run %s: finishing round %d, committed before the controller stopped", self.run_id, partial.round)
            records.append(await self._finish(partial, Counter(), time.perf_counter()))
        first = self.store.last_committed_round(self.run_id) + 1
        finished = first - 1
        progressed = asyncio.Condition()
        produced: asyncio.Queue[_Produced | None] = asyncio.Queue()

        async def produce() -> None:
            try:
                for round_index in range(first, self.config.rounds + 1):
                    needed = round_index - 1 - self.staleness_bound
                    async with progressed:
                        await progressed.wait_for(lambda needed=needed: finished >= needed)
                    if not await self.control.may_start():
                        break
                    produced.put_nowait(await self._produce(round_index))
            finally:
                produced.put_nowait(None)

        producer = asyncio.create_task(produce(), name=f"{self.run_id}-producer")
        try:
            while (item := await produced.get()) is not None:
                records.append(await self._finish(item.partial, item.timings, item.started))
                async with progressed:
                    finished = item.partial.round
                    progressed.notify_all()
            await producer  # its error, if it failed
        finally:
            producer.cancel()
        return records

    async def _evaluate_base(self) -> None:
        """The baseline of every later evaluation, once per run, before its first round trains."""
        run = self.store.get_run(self.run_id)
        if run is None or not self.config.eval_every or run.base_eval_accuracy or run.base_eval_degenerate:
            return
        if self.store.last_committed_round(self.run_id):
            return  # a run that trained before it was evaluated has no base figure to measure now
        self._phase(0, "eval")
        held_out = await self.evaluate()
        run = self.store.get_run(self.run_id)
        assert run is not None
        run.base_eval_accuracy.update(held_out.accuracy)
        run.base_eval_degenerate.update(held_out.degenerate)
        for task, hallucination in held_out.hallucination.items():
            run.base_eval_hallucination[task].CopyFrom(hallucination)
        self.store.put_run(run)
        self._phase(0, "done")
        log.info(
            "run %s: base policy accuracy %s, degenerate answers %s, hallucination rate %s",
            self.run_id,
            held_out.accuracy,
            held_out.degenerate,
            {task: round(h.rate, 4) for task, h in held_out.hallucination.items()},
        )

    def _phase(self, round_index: int, phase: str) -> None:
        if self.on_phase is not None:
            self.on_phase(round_index, phase)

    async def _wait_for_services(self) -> None:
        """Until rollout, reward and trainer all answer their health check SERVING (no token needed)."""
        clients = {"rollout": self.clients.rollout, "reward": self.clients.reward, "trainer": self.clients.trainer}
        started = time.monotonic()
        reported = started
        while True:
            waiting = []
            for name, client in clients.items():
                try:
                    if await serving_status(client.channel, timeout=10) != health_pb2.HealthCheckResponse.SERVING:
                        waiting.append(name)
                except grpc.aio.AioRpcError as error:
                    if error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                        raise
                    waiting.append(name)
            if not waiting:
                return
            now = time.monotonic()
            if now - started > SERVICES_START_TIMEOUT_S:
                raise TimeoutError(f"{', '.join(waiting)} not serving after {SERVICES_START_TIMEOUT_S:.0f} s")
            if now - reported >= 30:
                log.info("run %s: waiting for %s to serve (%.0f s)", self.run_id, ", ".join(waiting), now - started)
                reported = now
            await asyncio.sleep(2.0)

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """`call()` under the run's retry policy: the one way this loop calls a service."""
        return await self.retry.call(f"run {self.run_id}: {what}", call)

    async def _produce(self, round_index: int) -> _Produced:
        """Sample, label and commit round `round_index`; what the consumer needs to finish it."""
        config, timings = self.config, Counter[str]()
        started = time.perf_counter()
        prompts = [to_prompt(r) for r in self.sampler.round(round_index)]
        sampling = common_pb2.SamplingParams(
            n=config.samples_per_prompt,
            temperature=config.temperature,
            top_k=config.top_k,
            max_tokens=config.max_tokens,
            seed=config.seed * 1_000_003 + round_index,
        )
        options = reward_pb2.PairOptions(
            max_pairs_per_prompt=config.max_pairs_per_prompt, seed=round_index, dropout_sampling=sampling
        )
        self._phase(round_index, "generate")
        with _timed(timings, "generate"):
            generated = await self._call("generate", lambda: self.clients.rollout.generate(prompts, sampling))
        self._phase(round_index, "label")
        with _timed(timings, "label"):
            labelled = await self._call(
                "build pairs",
                lambda: self.clients.reward.build_pairs(prompts, generated.samples, round=round_index, options=options),
            )
        for pair in labelled.pairs:  # unique across the runs one trainer may serve, in ledger and trainer
            pair.id = f"{self.run_id}/{pair.id}"
        partial = common_pb2.RoundMetrics(
            run_id=self.run_id,
            round=round_index,
            rollout_policy_version=max((s.policy_version for s in generated.samples), default=0),
            labels=labelled.stats,
            rollout_tokens_per_second=sum(len(s.token_ids) for s in generated.samples) / max(timings["generate"], 1e-9),
        )
        failpoint("controller.after_rollout")
        self._phase(round_index, "commit")
        with _timed(timings, "commit"):
            self.store.commit_pairs(
                self.run_id, round_index, labelled.pairs, partial, prompts=labelled.prompts, prompt=self.prompt
            )
        failpoint("controller.after_commit")
        return _Produced(partial, timings, started)

    async def _finish(
        self, partial: common_pb2.RoundMetrics, timings: Counter[str], started: float
    ) -> common_pb2.RoundMetrics:
        """Train on the committed pairs, publish, evaluate and store the record. Safe to repeat after a
        crash at any point: the trainer skips pair ids it has trained, and publishing again only adds a
        version with the same weights."""
        record = common_pb2.RoundMetrics()
        record.CopyFrom(partial)
        round_index = record.round
        prompts, pairs = self.store.committed_round(self.run_id, round_index)  # each prompt's images once
        trainer = self.clients.trainer
        self._phase(round_index, "train")
        with _timed(timings, "train"):
            # The weights that train on these pairs are the ones serving: the trainer's own counter lags
            # after a restart from a checkpoint (checkpoints are taken before publishing).
            held = await self._serving_version()
            if pairs:  # repeating Train is safe: the trainer skips the pair ids it has trained
                response = await self._call(
                    "train",
                    lambda: trainer.train(pairs, prompts=prompts, round=round_index, epochs=self.config.epochs),
                )
                if response.steps:  # none when a restarted controller repeats a round trained before
                    record.train.CopyFrom(response.mean)
                    record.train_steps = len(response.steps)
            await self._call("checkpoint", lambda: trainer.checkpoint(f"round-{round_index}"))
        step = (await self._call("trainer status", trainer.status)).step
        self.store.mark_trained(self.run_id, round_index, step, trained_version=held, partial=record)
        staleness = list(self.store.pair_staleness(self.run_id, round_index).values())
        record.staleness_max = max(staleness, default=0)
        record.staleness_mean = sum(staleness) / len(staleness) if staleness else 0.0
        record.trained_policy_version = await self._serving_version()
        if self._publishes(round_index, trained=bool(pairs)):
            self._phase(round_index, "publish")
            with _timed(timings, "publish"):
                record.trained_policy_version += 1
                await self._call("publish", lambda: self._publish(record.trained_policy_version))
            failpoint("controller.after_publish")
        if self.config.eval_every and round_index % self.config.eval_every == 0:
            self._phase(round_index, "eval")
            with _timed(timings, "eval"):
                held_out = await self.evaluate()
                record.eval_accuracy.update(held_out.accuracy)
                record.eval_degenerate.update(held_out.degenerate)
                for task, hallucination in held_out.hallucination.items():
                    record.eval_hallucination[task].CopyFrom(hallucination)
        self._phase(round_index, "record")
        total = time.perf_counter() - started
        record.timings.CopyFrom(
            common_pb2.PhaseTimings(**timings, total=total, overhead=max(0.0, total - sum(timings.values())))
        )
        record.finished_at = time.time()
        self.store.store_round(record)
        await self._update_run(record)
        self._phase(round_index, "done")
        if self.on_round is not None:
            self.on_round(record)
        log.info("run %s: round %d stored (version %d)", self.run_id, round_index, record.trained_policy_version)
        return record

    def _publishes(self, round_index: int, *, trained: bool) -> bool:
        """Online, a round that trained publishes its weights for the next round to sample. Offline
        (`sample_from: base`) only the last round publishes, trained or not: every round samples the base."""
        if self.config.sample_from == "base":
            return round_index >= self.config.rounds
        return trained

    async def _serving_version(self) -> int:
        return (await self._call("rollout status", self.clients.rollout.status)).policy_version

    async def _publish(self, version: int) -> None:
        """Publish `version` unless it serves already: the rollout service takes exactly serving + 1, and an
        attempt whose answer was lost (UNAVAILABLE) may have committed it. Retried as one unit (`_call`), so
        its status read is a plain call here."""
        if (await self.clients.rollout.status()).policy_version >= version:
            return
        await self.clients.trainer.publish_weights(version, _TRANSPORTS[self.config.transport])

    async def _update_run(self, record: common_pb2.RoundMetrics) -> None:
        run = self.store.get_run(self.run_id)
        if run is None:
            raise ValueError(f"run {self.run_id!r} is not in the store")
        run.current_round = record.round
        run.policy_version = record.trained_policy_version
        run.updated_at = record.finished_at
        if record.eval_accuracy:
            accuracy = sum(record.eval_accuracy.values()) / len(record.eval_accuracy)
            if run.best_round == 0 or accuracy > run.best_eval_accuracy:
                # Nothing trained since this round's checkpoint: marking it keeps exactly these weights.
                best = await self._call(
                    "best checkpoint", lambda: self.clients.trainer.checkpoint(f"round-{record.round}", best=True)
                )
                run.best_eval_accuracy, run.best_round, run.best_checkpoint = accuracy, record.round, best.path
        self.store.put_run(run)

    async def evaluate(self) -> HeldOut:
        """Greedy held-out accuracy per task, judged by the reward service's verifiers (final-answer
        accuracy, so a step check that makes labelling stricter does not move the yardstick) on the prompts
        with ground truth, the share of degenerate answers per task (`mpo.grading.degenerate`), and
        hallucination in the answers to open-ended prompts about a known scene (`mpo.grading.hallucination`)."""
        greedy = common_pb2.SamplingParams(n=1, temperature=0.0, max_tokens=self.config.heldout_max_tokens)
        correct, graded = Counter[str](), Counter[str]()
        degenerate, total = Counter[str](), Counter[str]()
        descriptions: dict[str, list[DescriptionCheck]] = {}
        size = self.config.EVAL_BATCH_PROMPTS
        for start in range(0, len(self.heldout), size):
            batch = self.heldout[start : start + size]
            samples = (
                await self._call("held-out generate", functools.partial(self.clients.rollout.generate, batch, greedy))
            ).samples
            scores = (
                await self._call("held-out score", functools.partial(self.clients.reward.score, batch, samples))
            ).scores
            task_of = {p.id: p.task for p in batch}
            sample_of = {(s.prompt_id, s.index): s for s in samples}
            for score in scores:
                task = task_of[score.prompt_id]
                sample = sample_of[score.prompt_id, score.index]
                total[task] += 1
                degenerate[task] += judge_degeneracy(sample, score.verdict).degenerate
                if score.verdict != reward_pb2.VERDICT_NO_GROUND_TRUTH:
                    graded[task] += 1
                    correct[task] += score.verdict in _FINAL_ANSWER_RIGHT
                if score.prompt_id in self.scenes:
                    check = judge_description(self.scenes[score.prompt_id], sample.text)
                    descriptions.setdefault(task, []).append(check)
        return HeldOut(
            accuracy={task: correct[task] / graded[task] for task in graded},
            degenerate={task: degenerate[task] / total[task] for task in total},
            hallucination={task: _hallucination(checks) for task, checks in descriptions.items()},
        )


def _hallucination(checks: Sequence[DescriptionCheck]) -> common_pb2.Hallucination:
    summary = summarize(checks)
    return common_pb2.Hallucination(
        rate=summary.rate, mentions=summary.mentions, recall=summary.recall, descriptions=summary.descriptions
    )
