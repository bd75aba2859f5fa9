"""The replicas of one rollout service as Ray actors, and how calls are spread over them.

Why Ray actors behind our own gRPC ingress rather than Ray Serve's gRPC proxy: a weight update must
reach *every* replica (Serve routes each call to one), LoadWeights is client-streaming (Serve's
proxy takes unary and server-streaming calls only), and the ingress reuses the shared plumbing
(auth, validation, health, metrics) that every other service has. Routing is least-in-flight with
a per-replica bound.

A replica is up (routed to) or down: from the moment a call finds it gone until the restarted actor
answers `describe`, which it does only once it has loaded the committed weights from the ledger. A
replica goes down when it dies, and also when a weight reload fails in it: it then exits rather than
serve half-loaded weights (see replica.py), and `load` waits for it to come back at the committed
version.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, ObjectLostError, RayActorError

from mpo.config import RolloutConfig
from mpo.services.rollout.engines.base import Completion, Delta, EngineDescription, EngineInput, SamplingSpec
from mpo.services.rollout.replica import RolloutReplica
from mpo.serving.validation import InvalidRequest

T = TypeVar("T")
#: A replica died, or its node did (its results lost with the node's object store).
_REPLICA_GONE = (RayActorError, ActorDiedError, ActorUnavailableError, ObjectLostError)
#: Ray calls beyond the queued requests that a replica must still take (loads, status).
_CONTROL_SLOTS = 8


class ReplicaUnavailable(Exception):
    """A replica died or restarted under a call; the caller gets UNAVAILABLE and may retry."""


#: How long a replica may take to (re)start its engine and load the committed weights.
_START_TIMEOUT_S = 900.0


@dataclass
class _Slot:
    index: int
    actor: Any
    in_flight: int = 0
    #: False from a death until the restarted actor answers again; routing skips it meanwhile.
    up: bool = True
    recovery: asyncio.Task[Any] | None = None


class ReplicaPool:
    def __init__(self, config: RolloutConfig) -> None:
        if not ray.is_initialized():
            raise RuntimeError("ReplicaPool needs ray.init() first")
        self.config = config
        remote = ray.remote(RolloutReplica).options(
            num_cpus=config.num_cpus_per_replica,
            num_gpus=config.num_gpus_per_replica,
            resources=config.ray_resources,
            max_restarts=-1,
            max_task_retries=0,
            max_concurrency=config.max_queued_requests + _CONTROL_SLOTS,
        )
        self._slots = [_Slot(i, remote.remote(config, i)) for i in range(config.replicas)]
        #: Held by the service while an update is verified, committed and broadcast: updates never interleave.
        self.load_lock = asyncio.Lock()

    async def wait_ready(self) -> list[tuple[int, int, EngineDescription]]:
        """(version, in flight, engine) of every replica once each is up with the committed weights."""
        return await asyncio.gather(*(self._describe_when_up(slot) for slot in self._slots))

    async def _describe_when_up(self, slot: _Slot) -> tuple[int, int, EngineDescription]:
        """Ray refuses calls while it restarts an actor; ask again until the replica answers."""
        deadline = asyncio.get_running_loop().time() + _START_TIMEOUT_S
        while True:
            try:
                described = await slot.actor.describe.remote()
            except _REPLICA_GONE:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.5)
                continue
            slot.up = True
            return described

    def _mark_down(self, slot: _Slot) -> None:
        if slot.up:
            slot.up = False
            slot.recovery = asyncio.create_task(self._describe_when_up(slot))

    def _pick(self) -> _Slot:
        live = [s for s in self._slots if s.up]
        if not live:
            raise ReplicaUnavailable("no replica is up: all are restarting; retry")
        slot = min(live, key=lambda s: s.in_flight)
        if slot.in_flight >= self.config.max_queued_requests:
            raise InvalidRequest(
                "prompts",
                f"all {len(self._slots)} replicas hold {self.config.max_queued_requests} requests "
                "(max_queued_requests); retry later",
                grpc.StatusCode.RESOURCE_EXHAUSTED,
            )
        return slot

    async def _call(self, slot: _Slot, ref: Awaitable[T]) -> T:
        try:
            return await ref
        except _REPLICA_GONE as exc:
            self._mark_down(slot)
            raise ReplicaUnavailable(f"replica {slot.index} went away mid-call ({type(exc).__name__}); retry") from exc
        except asyncio.CancelledError:
            ray.cancel(ref)  # the client left or its deadline passed: stop the work in the engine too
            raise

    @property
    def queue_depth(self) -> int:
        return sum(slot.in_flight for slot in self._slots)

    async def generate(self, inputs: list[EngineInput], spec: SamplingSpec) -> tuple[int, list[list[Completion]]]:
        slot = self._pick()
        slot.in_flight += 1
        try:
            return await self._call(slot, slot.actor.generate.remote(inputs, spec))
        finally:
            slot.in_flight -= 1

    async def stream(self, inputs: list[EngineInput], spec: SamplingSpec) -> AsyncIterator[tuple[int, Delta]]:
        slot = self._pick()
        slot.in_flight += 1
        try:
            async for ref in slot.actor.stream.remote(inputs, spec):
                yield await self._call(slot, ref)
        except _REPLICA_GONE as exc:
            raise ReplicaUnavailable(
                f"replica {slot.index} went away mid-stream ({type(exc).__name__}); retry"
            ) from exc
        finally:
            slot.in_flight -= 1

    async def load(self, version: int, files: list[Path], tensor_count: int) -> int:
        """Every replica serves `version` when this returns; the count of replicas that loaded it.

        A replica that is down, or dies during the load (its reload failed, or it crashed), is waited for
        and asked again: restarted, it has caught up from the ledger already (the version is committed
        before this is called), or loads now. Callers hold `load_lock`.
        """

        async def one(slot: _Slot) -> int:
            try:
                return await self._call(slot, slot.actor.load.remote(version, files, tensor_count))
            except ReplicaUnavailable:
                await self._describe_when_up(slot)
                return await self._call(slot, slot.actor.load.remote(version, files, tensor_count))

        versions = await asyncio.gather(*(one(slot) for slot in self._slots))
        return sum(1 for v in versions if v >= version)

    async def shutdown(self) -> None:
        await asyncio.gather(*(slot.actor.shutdown.remote() for slot in self._slots), return_exceptions=True)
        for slot in self._slots:
            ray.kill(slot.actor, no_restart=True)

    @property
    def actors(self) -> list[Any]:
        return [slot.actor for slot in self._slots]
