"""`ControllerService` over gRPC, hosted by a Ray actor that Ray restarts after a crash.

The actor keeps its port across restarts (picked once, before the first start), so clients reconnect
to the same address; on every start it continues the run that was running or paused (`RunManager`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from mpo.config import ControllerConfig, ControllerServeConfig
from mpo.net import free_port
from mpo.services.controller.metrics import RoundGauges
from mpo.services.controller.retry import ServiceClients
from mpo.services.controller.runs import RunManager
from mpo.services.controller.store import RunStore
from mpo.services.dashboard.server import DashboardServer, start_dashboard
from mpo.services.dashboard.sources import ControllerSource
from mpo.serving.handle import ServiceHandle, start_server
from mpo.serving.server import ServiceServer
from mpo.serving.telemetry import RpcMetrics
from mpo.v1 import controller_pb2, controller_pb2_grpc

log = logging.getLogger(__name__)


class ControllerService(controller_pb2_grpc.ControllerServiceServicer):
    def __init__(self, runs: RunManager) -> None:
        self.runs = runs

    async def StartRun(
        self, request: controller_pb2.StartRunRequest, context: grpc.aio.ServicerContext
    ) -> controller_pb2.StartRunResponse:
        return controller_pb2.StartRunResponse(run=await self.runs.start(request.config_yaml, request.run_id))

    async def PauseRun(
        self, request: controller_pb2.PauseRunRequest, context: grpc.aio.ServicerContext
    ) -> controller_pb2.PauseRunResponse:
        return controller_pb2.PauseRunResponse(run=await self.runs.pause(request.run_id))

    async def ResumeRun(
        self, request: controller_pb2.ResumeRunRequest, context: grpc.aio.ServicerContext
    ) -> controller_pb2.ResumeRunResponse:
        return controller_pb2.ResumeRunResponse(run=await self.runs.resume(request.run_id))

    async def StopRun(
        self, request: controller_pb2.StopRunRequest, context: grpc.aio.ServicerContext
    ) -> controller_pb2.StopRunResponse:
        return controller_pb2.StopRunResponse(run=await self.runs.stop(request.run_id))

    async def GetRun(
        self, request: controller_pb2.GetRunRequest, context: grpc.aio.ServicerContext
    ) -> controller_pb2.GetRunResponse:
        return controller_pb2.GetRunResponse(run=self.runs.get(request.run_id))

    async def ListRuns(
        self, request: controller_pb2.ListRunsRequest, context: grpc.aio.ServicerContext
    ) -> controller_pb2.ListRunsResponse:
        return controller_pb2.ListRunsResponse(runs=self.runs.list())

    async def ListRounds(
        self, request: controller_pb2.ListRoundsRequest, context: grpc.aio.ServicerContext
    ) -> controller_pb2.ListRoundsResponse:
        self.runs.get(request.run_id)
        rounds = self.runs.store.round_records(request.run_id, from_round=request.from_round)
        return controller_pb2.ListRoundsResponse(rounds=rounds[: request.limit] if request.limit else rounds)

    async def WatchRounds(
        self, request: controller_pb2.WatchRoundsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[controller_pb2.WatchRoundsResponse]:
        async for record in self.runs.watch(request.run_id, request.from_round):
            yield controller_pb2.WatchRoundsResponse(round=record)


class ControllerActor:
    """Hosts the controller's gRPC server and its runs in one Ray actor process."""

    def __init__(
        self, config: ControllerConfig, store_dir: str, addresses: dict[str, str], pairs_dir: str | None = None
    ) -> None:
        self.config, self.store_dir, self.addresses = config, Path(store_dir), addresses
        self.pairs_dir = Path(pairs_dir) if pairs_dir is not None else None
        self.server: ServiceServer | None = None
        self.runs: RunManager | None = None
        self.dashboard: DashboardServer | None = None
        self._clients: ServiceClients | None = None
        # Ray calls __init__ outside the actor's event loop; the server starts on it, and every method
        # waits for that first (also after Ray restarts the actor).
        self._started = asyncio.get_event_loop().create_task(self._start())

    async def _start(self) -> None:
        clients = self._clients = ServiceClients.connect(self.addresses, self.config.server.auth)
        metrics = RpcMetrics()
        store = RunStore(self.store_dir, pairs_dir=self.pairs_dir)
        self.runs = RunManager(store, clients, self.config, RoundGauges(metrics.registry))
        await self.runs.continue_interrupted()  # before serving: a reconnecting watcher sees the run live
        if self.config.dashboard.enabled:
            self.dashboard = await start_dashboard(ControllerSource(self.runs, clients), self.config.dashboard)
        self.server = await start_server(
            self.config.server, ControllerService(self.runs), name="controller", metrics=metrics
        )
        log.info("controller serving on %s (store %s)", self.server.address, self.store_dir)

    async def describe(self) -> dict[str, Any]:
        """Address, metrics port and process id, once the server is up."""
        await self._started
        assert self.server is not None
        return {
            "address": self.server.address,
            "metrics_port": self.server.metrics_port,
            "dashboard_url": self.dashboard.url if self.dashboard else None,
            "pid": os.getpid(),
        }

    async def shutdown(self, grace: float | None = 0) -> None:
        """Stop serving; an active run stays RUNNING (or PAUSED) in the store and continues on the next start."""
        await self._started
        assert self.server is not None and self.runs is not None
        if self.dashboard is not None:
            await self.dashboard.stop()
        await self.server.stop(grace)
        await self.runs.shutdown()
        if self._clients is not None:
            await self._clients.close()


@dataclass
class RunningController(ServiceHandle):
    actor: Any
    address: str
    metrics_port: int | None
    dashboard_url: str | None
    store_dir: Path
    name = "controller"

    async def pid(self) -> int:
        """The actor's current process (it changes when Ray restarts the actor)."""
        return int((await self.actor.describe.remote())["pid"])

    def ready_details(self) -> dict[str, object]:
        return {"metrics_port": self.metrics_port, "dashboard_url": self.dashboard_url}

    async def stop(self, grace: float | None = None) -> None:
        try:
            await self.actor.shutdown.remote(grace)
        finally:
            ray.kill(self.actor, no_restart=True)


async def start_controller(
    config: ControllerConfig,
    store_dir: Path,
    *,
    rollout: str,
    reward: str,
    trainer: str,
    pairs_dir: Path | None = None,
) -> RunningController:
    """Start the controller actor (restarted by Ray after a crash) on ports fixed for its lifetime (gRPC,
    metrics, dashboard); its run store in `store_dir`, the pair shards under `pairs_dir` when given."""
    server = config.server
    fixed = {"port": server.port or free_port(server.host)}
    if server.metrics_port == 0:
        fixed["metrics_port"] = free_port(server.host)
    dashboard = config.dashboard
    if dashboard.enabled and dashboard.port == 0:
        dashboard = dashboard.model_copy(update={"port": free_port(dashboard.host)})
    config = config.model_copy(update={"server": server.model_copy(update=fixed), "dashboard": dashboard})
    store_dir.mkdir(parents=True, exist_ok=True)
    # Pinned to this process's node: its ports are this node's (the head pod's, on Kubernetes), where the
    # Services point; Ray restarts it there after a crash.
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    actor = (
        ray.remote(ControllerActor)
        .options(num_cpus=0, max_restarts=-1, max_task_retries=-1, scheduling_strategy=here)
        .remote(
            config,
            str(store_dir.resolve()),
            {"rollout": rollout, "reward": reward, "trainer": trainer},
            str(pairs_dir.resolve()) if pairs_dir is not None else None,
        )
    )
    described = await actor.describe.remote()
    return RunningController(
        actor, described["address"], described["metrics_port"], described["dashboard_url"], store_dir
    )


async def serve_controller(config: ControllerServeConfig) -> RunningController:
    """`mpo serve controller`: the controller alone, driving services that already run elsewhere."""
    return await start_controller(
        ControllerConfig.model_validate(config.model_dump(include=set(ControllerConfig.model_fields))),
        config.store_dir,
        rollout=config.rollout_address,
        reward=config.reward_address,
        trainer=config.trainer_address,
        pairs_dir=config.pairs_dir,
    )
