"""The trainer's host: owns the rank group and the state that makes training exactly-once.

Each pair id is trained at most once per checkpoint lineage. The host remembers the ids trained so far
and a journal of the Train calls since the last checkpoint. When a rank dies, it starts a fresh group
from the last checkpoint, replays the journal (deterministic: same pairs, same order, same seeds) and
retries the failed call, so no pair is lost and none is trained twice into the weights. A checkpoint
stores the trained ids and empties the journal.

The host runs beside the ranks rather than inside rank 0, so a rank failure does not take the gRPC
endpoint down with it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from mpo.config import TrainerConfig
from mpo.trainer.batching import EncodedPair, PairEncoder
from mpo.trainer.checkpoints import Checkpoint, CheckpointStore, checkpoint_name
from mpo.trainer.group import RankFailure, TrainerGroup
from mpo.v1 import common_pb2

log = logging.getLogger(__name__)


@dataclass
class TrainOutcome:
    steps: list[dict[str, float]]
    already_trained: int
    truncated: int
    reference_seconds: float = 0.0


@dataclass
class _JournalEntry:
    pairs: Any  # ray.ObjectRef of list[EncodedPair]
    round: int
    epochs: int


@dataclass
class HostState:
    step: int = 0
    round: int = 0
    policy_version: int = 0
    reward_shift: float = 0.0
    trained: set[str] = field(default_factory=set)


class TrainerHost:
    def __init__(self, config: TrainerConfig) -> None:
        self.config = config
        self.encoder = PairEncoder(
            config.model,
            max_length=config.max_length,
            readable_roots=config.readable_roots,
            prompt=config.prompt,
            trust_remote_code=config.trust_remote_code,
        )
        self.store = CheckpointStore(config.checkpoint_dir, keep=config.keep_checkpoints)
        self.group = TrainerGroup(config)
        self.state = HostState()
        self.journal: list[_JournalEntry] = []
        self.lock = asyncio.Lock()
        self.ready = False
        self.restarts = 0

    async def start(self) -> None:
        await self.group.start()
        latest = self.store.latest() if self.config.resume else None
        if latest is not None:
            await self._load(latest)
        self.ready = True

    async def stop(self) -> None:
        self.ready = False
        await self.group.stop()

    async def _load(self, checkpoint: Checkpoint) -> None:
        meta = checkpoint.meta
        if meta["world_size"] != self.config.world_size or meta["strategy"] != self.config.strategy:
            raise ValueError(
                f"checkpoint {checkpoint.path} was written by {meta['world_size']} ranks with {meta['strategy']}; "
                f"this trainer has world_size {self.config.world_size} and strategy {self.config.strategy}"
            )
        statuses = await self.group.call("load_checkpoint", str(checkpoint.path), checkpoint.name)
        self.state = HostState(
            step=statuses[0]["step"],
            round=statuses[0]["round"],
            policy_version=int(meta["policy_version"]),
            reward_shift=statuses[0]["reward_shift"],
            trained=set(meta["trained_pair_ids"]),
        )
        log.info("trainer resumed from %s (step %d, round %d)", checkpoint.path, self.state.step, self.state.round)

    async def _recover(self, error: RankFailure) -> None:
        """Fresh group, last checkpoint, journal replayed: the ranks back at the state just before the failed
        call. The host's own state (trained ids, step, round, version) already is that state: loading the
        checkpoint must not roll it back to the checkpoint's, or the journal's ids would be forgotten."""
        self.restarts += 1
        log.warning("trainer rank failed (%s); restarting the group from the last checkpoint", error)
        self.ready = False
        state = self.state
        await self.group.stop()
        await self.group.start()
        latest = self.store.latest()
        if latest is not None:
            await self._load(latest)
        for entry in self.journal:
            await self.group.call("train", entry.pairs, entry.round, entry.epochs)
        self.state = state
        self.ready = True

    async def _call(self, method: str, *args: Any) -> list[Any]:
        for attempt in range(self.config.max_rank_restarts + 1):
            try:
                return await self.group.call(method, *args)
            except RankFailure as error:
                if not error.died or attempt == self.config.max_rank_restarts:
                    await self._recover(error)  # serve on with a working group, but do not repeat the error
                    raise
                await self._recover(error)
        raise AssertionError("unreachable")

    async def train(
        self,
        pairs: Sequence[common_pb2.PreferencePair],
        round_index: int,
        epochs: int,
        prompts: Sequence[common_pb2.Prompt] = (),
    ) -> TrainOutcome:
        """`prompts`: those the pairs name by `prompt_id` (`TrainRequest.prompts`)."""
        # Encoded (and so validated) in full before anything changes.
        encoded: list[EncodedPair] = await asyncio.to_thread(self.encoder.encode_all, pairs, prompts)
        async with self.lock:
            fresh = [p for p in encoded if p.id not in self.state.trained]
            outcome = TrainOutcome(
                steps=[], already_trained=len(encoded) - len(fresh), truncated=sum(p.truncated for p in fresh)
            )
            if not fresh:
                return outcome
            epochs = epochs or self.config.epochs
            reference = ray.put(fresh)
            outcome.steps, outcome.reference_seconds = (await self._call("train", reference, round_index, epochs))[0]
            self.journal.append(_JournalEntry(reference, round_index, epochs))
            self.state.trained.update(p.id for p in fresh)
            self.state.round = max(self.state.round, round_index)
            self.state.step = outcome.steps[-1]["step"]
            self.state.reward_shift = outcome.steps[-1]["reward_shift"]
            return outcome

    async def checkpoint(self, tag: str = "", *, best: bool = False) -> Checkpoint:
        """Commit the current state (or return the checkpoint that holds it); `best` also marks it the
        run's best, which pruning keeps."""
        async with self.lock:
            committed = await self._checkpoint(tag)
            if best:
                await asyncio.to_thread(self.store.mark_best, committed.name)
            return committed

    async def _checkpoint(self, tag: str) -> Checkpoint:
        name = checkpoint_name(self.state.step)
        latest = self.store.latest()
        if latest is not None and latest.name == name and not self.journal:
            return latest  # nothing trained since: that checkpoint is this state
        staging = self.store.staging(name)
        await self._call("save_checkpoint", str(staging), name)
        meta = {
            "tag": tag,
            "model": str(Path(self.config.model).resolve()),
            "world_size": self.config.world_size,
            "strategy": self.config.strategy,
            "step": self.state.step,
            "round": self.state.round,
            "policy_version": self.state.policy_version,
            "reward_shift": self.state.reward_shift,
            "trained_pair_ids": sorted(self.state.trained),
            "written_at": time.time(),
        }
        committed = await asyncio.to_thread(self.store.commit, name, meta)
        self.journal.clear()
        return committed

    async def gather_weights(self, bucket_bytes: int) -> tuple[list[bytes], int, float]:
        """Full weights as safetensors blobs, their tensor count, and the seconds the gather took."""
        async with self.lock:
            started = time.perf_counter()
            blobs, count = (await self._call("gather_weights", bucket_bytes))[0]
            return blobs, count, time.perf_counter() - started
