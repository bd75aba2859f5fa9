"""The online round, in sync mode: rollout → labelling → commit → train → publish → evaluate → record.

Every step talks to a service over gRPC (the typed clients), and what must survive a crash is in the
`RunStore` before the next step relies on it: the round's pairs are committed before the trainer sees
them, and the trainer is handed exactly the committed pairs, read back from the store. A round that was
committed but not finished (the controller died in between) is finished first when the run continues;
the trainer skips pair ids it has already trained, so nothing is trained twice.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from mpo.config import RoundsConfig
from mpo.data.records import PromptRecord
from mpo.services.common.clients import RewardClient, RolloutClient, TrainerClient
from mpo.services.controller.store import RunStore
from mpo.v1 import common_pb2, reward_pb2, trainer_pb2

log = logging.getLogger(__name__)

_TRANSPORTS = {
    "grpc_stream": trainer_pb2.WEIGHT_TRANSPORT_GRPC_STREAM,
    "shared_storage": trainer_pb2.WEIGHT_TRANSPORT_SHARED_STORAGE,
}


def to_prompt(record: PromptRecord) -> common_pb2.Prompt:
    """A data-set record as it travels: images inline, so no service needs the controller's files."""
    prompt = common_pb2.Prompt(id=record.id, question=record.question, task=record.task, choices=record.choices or [])
    if record.answer is not None:
        prompt.answer = record.answer
    for path in record.images:
        prompt.images.add(data=path.read_bytes())
    return prompt


class PromptSampler:
    """Round k's prompts: the next `per_round` of an endless sequence of seeded shuffles of the set, so a
    resumed run draws exactly the prompts it would have drawn."""

    def __init__(self, records: Sequence[PromptRecord], *, per_round: int, seed: int) -> None:
        if not records:
            raise ValueError("the prompt set is empty")
        self.records, self.per_round, self.seed = list(records), per_round, seed

    def _epoch(self, index: int) -> list[PromptRecord]:
        order = list(self.records)
        random.Random(f"{self.seed}-{index}").shuffle(order)
        return order

    def round(self, round_index: int) -> list[PromptRecord]:
        start = (round_index - 1) * self.per_round
        size = len(self.records)
        drawn = []
        for position in range(start, start + self.per_round):
            drawn.append(self._epoch(position // size)[position % size])
        return drawn


@contextmanager
def _timed(timings: Counter[str], name: str) -> Iterator[None]:
    """Adds the block's wall time to `timings[name]`."""
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[name] += time.perf_counter() - started


@dataclass
class ServiceClients:
    rollout: RolloutClient
    reward: RewardClient
    trainer: TrainerClient


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
    ) -> None:
        self.run_id, self.config, self.store, self.clients = run_id, config, store, clients
        self.on_round = on_round
        self.sampler = PromptSampler(train, per_round=config.prompts_per_round, seed=config.seed)
        self.heldout = [to_prompt(r) for r in heldout[: config.eval_prompts]]

    async def run(self) -> list[common_pb2.RoundMetrics]:
        """Finish rounds left unfinished, then run the rest up to `config.rounds`; returns their records."""
        records = []
        for partial in self.store.unfinished_rounds(self.run_id):
            log.info("run %s: finishing round %d, committed before the controller stopped", self.run_id, partial.round)
            records.append(await self._finish(partial, Counter(), time.perf_counter()))
        for round_index in range(self.store.last_committed_round(self.run_id) + 1, self.config.rounds + 1):
            records.append(await self.run_round(round_index))
        return records

    async def run_round(self, round_index: int) -> common_pb2.RoundMetrics:
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
        with _timed(timings, "generate"):
            generated = await self.clients.rollout.generate(prompts, sampling)
        with _timed(timings, "label"):
            labelled = await self.clients.reward.build_pairs(
                prompts,
                generated.samples,
                round=round_index,
                options=reward_pb2.PairOptions(max_pairs_per_prompt=config.max_pairs_per_prompt, seed=round_index),
            )
        partial = common_pb2.RoundMetrics(
            run_id=self.run_id,
            round=round_index,
            rollout_policy_version=max((s.policy_version for s in generated.samples), default=0),
            labels=labelled.stats,
            rollout_tokens_per_second=sum(len(s.token_ids) for s in generated.samples) / max(timings["generate"], 1e-9),
        )
        with _timed(timings, "commit"):
            self.store.commit_pairs(self.run_id, round_index, labelled.pairs, partial)
        return await self._finish(partial, timings, started)

    async def _finish(
        self, partial: common_pb2.RoundMetrics, timings: Counter[str], started: float
    ) -> common_pb2.RoundMetrics:
        """Train on the committed pairs, publish, evaluate and store the record. Safe to repeat after a
        crash at any point: the trainer skips pair ids it has trained, and publishing again only adds a
        version with the same weights."""
        record = common_pb2.RoundMetrics()
        record.CopyFrom(partial)
        pairs = self.store.committed_pairs(self.run_id, record.round)
        trainer = self.clients.trainer
        with _timed(timings, "train"):
            if pairs:
                response = await trainer.train(pairs, round=record.round, epochs=self.config.epochs)
                record.train.CopyFrom(response.mean)
                record.train_steps = len(response.steps)
            await trainer.checkpoint(f"round-{record.round}")
        self.store.mark_trained(self.run_id, record.round, (await trainer.status()).step)
        record.trained_policy_version = (await self.clients.rollout.status()).policy_version
        if pairs:
            with _timed(timings, "publish"):
                record.trained_policy_version += 1
                await trainer.publish_weights(record.trained_policy_version, _TRANSPORTS[self.config.transport])
        if self.config.eval_every and record.round % self.config.eval_every == 0:
            with _timed(timings, "eval"):
                record.eval_accuracy.update(await self.evaluate())
        total = time.perf_counter() - started
        record.timings.CopyFrom(
            common_pb2.PhaseTimings(**timings, total=total, overhead=max(0.0, total - sum(timings.values())))
        )
        record.finished_at = time.time()
        self.store.store_round(record)
        self._update_run(record)
        if self.on_round is not None:
            self.on_round(record)
        log.info("run %s: round %d stored (version %d)", self.run_id, record.round, record.trained_policy_version)
        return record

    def _update_run(self, record: common_pb2.RoundMetrics) -> None:
        run = self.store.get_run(self.run_id)
        if run is None:
            raise ValueError(f"run {self.run_id!r} is not in the store")
        run.current_round = record.round
        run.policy_version = record.trained_policy_version
        run.updated_at = record.finished_at
        if record.eval_accuracy:
            accuracy = sum(record.eval_accuracy.values()) / len(record.eval_accuracy)
            if run.best_round == 0 or accuracy > run.best_eval_accuracy:
                run.best_eval_accuracy, run.best_round = accuracy, record.round
        self.store.put_run(run)

    async def evaluate(self) -> dict[str, float]:
        """Greedy held-out accuracy per task, judged by the reward service's verifiers."""
        greedy = common_pb2.SamplingParams(n=1, temperature=0.0, max_tokens=self.config.max_tokens)
        correct, total = Counter[str](), Counter[str]()
        for start in range(0, len(self.heldout), 64):
            batch = self.heldout[start : start + 64]
            samples = (await self.clients.rollout.generate(batch, greedy)).samples
            scores = (await self.clients.reward.score(batch, samples)).scores
            task_of = {p.id: p.task for p in batch}
            for score in scores:
                total[task_of[score.prompt_id]] += 1
                correct[task_of[score.prompt_id]] += score.verdict == reward_pb2.VERDICT_CORRECT
        return {task: correct[task] / total[task] for task in total}
