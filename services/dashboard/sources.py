"""Where the dashboard's data comes from.

- `ControllerSource`: inside the controller, the live view: run state with the phase in progress,
  new rounds from the controller's own watch stream (`RunManager.watch`, what `WatchRounds` serves),
  and the services' health.
- `StoreSource`: a run store on disk and nothing else (`mpo dashboard --store-dir`, e.g. after the
  demo): rounds of a run still marked active are followed by re-reading the store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mpo.services.controller.retry import ServiceClients
from mpo.services.controller.runs import RunManager
from mpo.services.controller.store import RunStore
from mpo.serving.validation import InvalidRequest
from mpo.v1 import common_pb2, controller_pb2

#: How long a status probe of one service may take before the panel calls it unreachable.
STATUS_TIMEOUT_S = 2.0
#: How often `StoreSource` re-reads the store for rounds of a run that is still active.
STORE_FOLLOW_INTERVAL_S = 1.0


class UnknownRun(LookupError):
    """No run with this id in the store (the API answers 404)."""


class DashboardSource(Protocol):
    store: RunStore

    def runs(self) -> list[controller_pb2.Run]: ...

    def run(self, run_id: str) -> controller_pb2.Run: ...

    def watch(self, run_id: str, from_round: int) -> AsyncIterator[common_pb2.RoundMetrics]: ...

    async def services(self) -> list[dict[str, Any]] | None:
        """Health of each service, or None when this source knows no services."""
        ...


class StoreSource:
    def __init__(self, store_dir: Path) -> None:
        if not (Path(store_dir) / "runs.sqlite3").is_file():
            raise FileNotFoundError(f"no run store in {store_dir} (expected {Path(store_dir) / 'runs.sqlite3'})")
        self.store = RunStore(store_dir)

    def runs(self) -> list[controller_pb2.Run]:
        return sorted(self.store.list_runs(), key=lambda run: run.started_at, reverse=True)

    def run(self, run_id: str) -> controller_pb2.Run:
        run = self.store.get_run(run_id)
        if run is None:
            raise UnknownRun(run_id)
        return run

    async def watch(self, run_id: str, from_round: int) -> AsyncIterator[common_pb2.RoundMetrics]:
        next_round = max(from_round, 1)
        while True:
            for record in self.store.round_records(run_id, from_round=next_round):
                yield record
                next_round = record.round + 1
            if self.run(run_id).state not in (controller_pb2.RUN_STATE_RUNNING, controller_pb2.RUN_STATE_PAUSED):
                return
            await asyncio.sleep(STORE_FOLLOW_INTERVAL_S)

    async def services(self) -> list[dict[str, Any]] | None:
        return None


class ControllerSource:
    def __init__(self, runs: RunManager, clients: ServiceClients) -> None:
        self._runs, self._clients = runs, clients
        self.store = runs.store

    def runs(self) -> list[controller_pb2.Run]:
        runs = self._runs.list()
        active = self._runs.active
        # Only the active run has a phase in progress, which the stored records do not hold.
        return [self._runs.get(run.run_id) if active and run.run_id == active.run_id else run for run in runs]

    def run(self, run_id: str) -> controller_pb2.Run:
        try:
            return self._runs.get(run_id)
        except InvalidRequest as error:
            if error.code == grpc.StatusCode.NOT_FOUND:
                raise UnknownRun(run_id) from error
            raise

    def watch(self, run_id: str, from_round: int) -> AsyncIterator[common_pb2.RoundMetrics]:
        self.run(run_id)
        return self._runs.watch(run_id, from_round)

    async def services(self) -> list[dict[str, Any]] | None:
        clients = self._clients
        return list(
            await asyncio.gather(
                _probe("rollout", clients.rollout.address, clients.rollout.channel, lambda: _rollout_status(clients)),
                _probe("reward", clients.reward.address, clients.reward.channel, None),
                _probe("trainer", clients.trainer.address, clients.trainer.channel, lambda: _trainer_status(clients)),
            )
        )


async def _rollout_status(clients: ServiceClients) -> dict[str, Any]:
    status = await clients.rollout.status(timeout=STATUS_TIMEOUT_S)
    engine = status.engine
    return {
        "ready": status.ready,
        "policy_version": status.policy_version,
        "queue_depth": status.queue_depth,
        "replicas": engine.replicas,
        "detail": f"{engine.backend} on {engine.device}, tensor parallel {engine.tensor_parallel_size}",
    }


async def _trainer_status(clients: ServiceClients) -> dict[str, Any]:
    status = await clients.trainer.status(timeout=STATUS_TIMEOUT_S)
    return {
        "ready": status.ready,
        "policy_version": status.policy_version,
        "replicas": status.world_size,
        "detail": f"{status.strategy}, step {status.step}, round {status.round}",
    }


async def _probe(
    name: str, address: str, channel: grpc.aio.Channel, status: Callable[[], Awaitable[dict[str, Any]]] | None
) -> dict[str, Any]:
    """gRPC health check (what Kubernetes probes) plus the service's own status, where it has one."""
    row: dict[str, Any] = {"service": name, "address": address}
    try:
        answer = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=STATUS_TIMEOUT_S
        )
        row["health"] = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status).lower()
        if status is not None:
            row.update(await status())
    except grpc.aio.AioRpcError as error:
        row["health"] = "unreachable"
        row["error"] = f"{error.code().name}: {error.details()}"
    return row
