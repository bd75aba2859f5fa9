"""One engine replica, hosted in a Ray actor: serves requests, and swaps weights between them.

Its states, and why every sample is made by exactly one committed policy version (the one it is
tagged with):

- starting: the engine comes up and loads the ledger's committed version; no request is admitted
  until that is done.
- serving version v: requests are admitted and tagged v.
- loading v + 1: admission stops, the in-flight requests finish, the engine reloads in place; on
  success the replica serves v + 1.
- failed load: a reload that raised (anything: an engine error, a short count, a cancelled call) may
  have replaced some tensors and not others. Those mixed weights are never served: the process exits
  at once, Ray restarts the actor, and it is starting again, from the ledger (which already names the
  new version: the service commits before it broadcasts). An engine that died while serving takes the
  same way out.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TypeVar

from mpo.config import RolloutConfig
from mpo.cpu_affinity import pin_process
from mpo.services.rollout.engines import create_engine
from mpo.services.rollout.engines.base import Completion, Delta, Engine, EngineDescription, EngineInput, SamplingSpec
from mpo.weights import WeightLedger

log = logging.getLogger(__name__)
T = TypeVar("T")


class WeightLoadError(RuntimeError):
    """The engine did not take the update whole: the replica exits rather than serve what it holds."""


class RolloutReplica:
    """Deployed with `ray.remote` by the pool; every method waits until the start-up load is done."""

    def __init__(self, config: RolloutConfig, index: int) -> None:
        pin_process(config.cpu_affinity, field="rollout.cpu_affinity")  # before the engine's processes start
        self.config, self.index = config, index
        self.ledger = WeightLedger(config.weights_dir)
        self.version = 0
        self._engine: Engine | None = None
        self._start_lock = asyncio.Lock()
        self._gate = asyncio.Condition()  # guards _in_flight and _loading
        self._in_flight = 0
        self._loading = False

    async def _ready_engine(self) -> Engine:
        async with self._start_lock:
            if self._engine is None:
                engine = create_engine(self.config)
                committed = self.ledger.current()
                if committed is not None:
                    await self._load_into(engine, committed.version, committed.files, committed.manifest.tensor_count)
                self._engine = engine
                log.info("replica %d ready at policy version %d", self.index, self.version)
        return self._engine

    async def _load_into(self, engine: Engine, version: int, files: list[Path], tensor_count: int) -> None:
        """Load `version` whole, or exit the process: see "failed load" above."""
        try:
            loaded = await engine.load_weights(files)
            if loaded != tensor_count:
                raise WeightLoadError(f"replica {self.index} loaded {loaded} tensors, the update has {tensor_count}")
        except BaseException as error:  # cancellation too: the engine may be half-way
            log.error(
                "replica %d: loading version %d failed (%r); exiting so Ray restarts it from the ledger",
                self.index, version, error,
            )  # fmt: skip
            os._exit(1)
        self.version = version

    async def _admit(self) -> tuple[Engine, int]:
        engine = await self._ready_engine()
        async with self._gate:
            await self._gate.wait_for(lambda: not self._loading)
            self._in_flight += 1
            return engine, self.version

    async def _release(self) -> None:
        async with self._gate:
            self._in_flight -= 1
            self._gate.notify_all()

    def _die_if_engine_dead(self, error: BaseException) -> None:
        """An engine that died cannot come back in this process: exit, so Ray restarts the replica (which
        reloads the committed weights) and callers get UNAVAILABLE instead of a dead replica forever."""
        if type(error).__name__ == "EngineDeadError":
            log.error("replica %d: engine died (%s); exiting so Ray restarts it", self.index, error)
            os._exit(1)

    async def _guarded(self, work: Awaitable[T]) -> T:
        try:
            return await work
        except Exception as error:
            self._die_if_engine_dead(error)
            raise

    async def generate(self, inputs: list[EngineInput], spec: SamplingSpec) -> tuple[int, list[list[Completion]]]:
        engine, version = await self._admit()
        try:
            return version, await self._guarded(engine.generate(inputs, spec))
        finally:
            await self._release()

    async def stream(self, inputs: list[EngineInput], spec: SamplingSpec) -> AsyncIterator[tuple[int, Delta]]:
        engine, version = await self._admit()
        try:
            async for delta in engine.stream(inputs, spec):
                yield version, delta
        except Exception as error:
            self._die_if_engine_dead(error)
            raise
        finally:
            await self._release()

    async def load(self, version: int, files: list[Path], tensor_count: int) -> int:
        """Drain, load, then serve `version`; a version already served is a no-op (restart catch-up)."""
        engine = await self._ready_engine()
        async with self._gate:
            if version <= self.version:
                return self.version
            self._loading = True
            try:
                await self._gate.wait_for(lambda: self._in_flight == 0)
                await self._load_into(engine, version, files, tensor_count)
            finally:
                self._loading = False
                self._gate.notify_all()
        return self.version

    async def describe(self) -> tuple[int, int, EngineDescription]:
        engine = await self._ready_engine()
        return self.version, self._in_flight, engine.description

    async def shutdown(self) -> None:
        if self._engine is not None:
            await self._engine.shutdown()
