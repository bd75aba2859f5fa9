"""`TrainerService` over gRPC: the thin adapter between the contract and `TrainerHost`.

Publishing gathers the full weights from the ranks (ZeRO-3 shards) and sends them through one of the
rollout service's transports; the rollout service verifies them and loads them on every replica before
it answers, so a PublishWeights that returns means the new version is serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import grpc

from mpo.config import TrainerConfig
from mpo.serving.clients import RolloutClient
from mpo.serving.handle import ServerHandle, connect, start_server
from mpo.serving.validation import InvalidRequest
from mpo.trainer.host import TrainerHost
from mpo.v1 import common_pb2, trainer_pb2, trainer_pb2_grpc
from mpo.weights import manifest_for, prune_published, published_dir, write_shards

log = logging.getLogger(__name__)

#: Parameters gathered per all-gather when publishing (the memory one gather holds on each rank). The
#: blobs sent are cut from each gathered bucket at the transport's own size.
GATHER_BUCKET_BYTES = 64 * 2**20

#: StepMetrics field ← the rank's metric name.
_METRIC_FIELDS = {
    "loss": "loss",
    "loss_preference": "loss/preference",
    "loss_quality": "loss/quality",
    "loss_generation": "loss/generation",
    "reward_shift": "reward_shift",
    "reward_chosen": "rewards/chosen",
    "reward_rejected": "rewards/rejected",
    "reward_margin": "rewards/margin",
    "preference_accuracy": "rewards/accuracy",
    "learning_rate": "learning_rate",
    "grad_norm": "grad_norm",
}


def step_metrics(step: dict[str, float]) -> common_pb2.StepMetrics:
    fields = {name: step[key] for name, key in _METRIC_FIELDS.items()}
    return common_pb2.StepMetrics(step=int(step["step"]), tokens=int(step["tokens"]), **fields)


def mean_metrics(steps: list[dict[str, float]]) -> common_pb2.StepMetrics:
    """Mean over the steps, except `step` (the last) and `tokens` (the sum), as the contract says."""
    if not steps:
        return common_pb2.StepMetrics()
    fields = {name: sum(s[key] for s in steps) / len(steps) for name, key in _METRIC_FIELDS.items()}
    return common_pb2.StepMetrics(step=int(steps[-1]["step"]), tokens=int(sum(s["tokens"] for s in steps)), **fields)


class TrainerService(trainer_pb2_grpc.TrainerServiceServicer):
    def __init__(self, config: TrainerConfig, host: TrainerHost, rollout: RolloutClient | None) -> None:
        self.config, self.host, self.rollout = config, host, rollout

    async def Train(
        self, request: trainer_pb2.TrainRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.TrainResponse:
        # Shielded: a caller that goes away (a controller killed mid-call) must not cut a call whose steps
        # the ranks finish anyway; the host then records the pairs as trained, and the caller's retry
        # finds them trained instead of training them twice.
        outcome = await asyncio.shield(self.host.train(request.pairs, request.round, request.epochs, request.prompts))
        return trainer_pb2.TrainResponse(
            steps=[step_metrics(s) for s in outcome.steps],
            mean=mean_metrics(outcome.steps),
            pairs_already_trained=outcome.already_trained,
            pairs_truncated=outcome.truncated,
        )

    async def Checkpoint(
        self, request: trainer_pb2.CheckpointRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.CheckpointResponse:
        committed = await asyncio.shield(self.host.checkpoint(request.tag, best=request.best))
        return trainer_pb2.CheckpointResponse(
            path=str(committed.path), step=committed.meta["step"], round=committed.meta["round"]
        )

    async def PublishWeights(
        self, request: trainer_pb2.PublishWeightsRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.PublishWeightsResponse:
        if request.transport == trainer_pb2.WEIGHT_TRANSPORT_GPU_DIRECT:
            raise InvalidRequest(
                "transport",
                "WEIGHT_TRANSPORT_GPU_DIRECT is not available in this release; use GRPC_STREAM or SHARED_STORAGE",
                grpc.StatusCode.UNIMPLEMENTED,
            )
        if self.rollout is None:
            raise InvalidRequest(
                "transport",
                "no rollout service is configured (trainer.rollout_address)",
                grpc.StatusCode.FAILED_PRECONDITION,
            )
        blobs, count, gather_seconds = await self.host.gather_weights(GATHER_BUCKET_BYTES)
        manifest = manifest_for(blobs, request.version, tensor_count=count)
        started = time.perf_counter()
        try:
            if request.transport == trainer_pb2.WEIGHT_TRANSPORT_SHARED_STORAGE:
                directory = published_dir(self.config.publish_dir, request.version)
                await asyncio.to_thread(write_shards, blobs, directory)
                loaded = await self.rollout.load_weights_from_storage(manifest, str(directory.resolve()))
                await asyncio.to_thread(prune_published, self.config.publish_dir, directory)
            else:
                loaded = await self.rollout.load_weights(manifest, blobs)
        except grpc.aio.AioRpcError as error:  # e.g. a version the rollout service already serves
            raise InvalidRequest(
                "version", f"rollout service refused the weights: {error.details()}", error.code()
            ) from error
        self.host.state.policy_version = request.version
        return trainer_pb2.PublishWeightsResponse(
            policy_version=loaded.policy_version,
            bytes=manifest.total_bytes,
            gather_seconds=gather_seconds,
            transfer_seconds=time.perf_counter() - started,
            replicas_loaded=loaded.replicas_loaded,
        )

    async def GetStatus(
        self, request: trainer_pb2.TrainerServiceGetStatusRequest, context: grpc.aio.ServicerContext
    ) -> trainer_pb2.TrainerServiceGetStatusResponse:
        state = self.host.state
        return trainer_pb2.TrainerServiceGetStatusResponse(
            world_size=self.config.world_size,
            strategy=self.config.strategy,
            step=state.step,
            round=state.round,
            policy_version=state.policy_version,
            reward_shift=state.reward_shift,
            model=str(self.config.model),
            ready=self.host.ready,
        )


@dataclass
class RunningTrainer(ServerHandle):
    service: TrainerService
    name = "trainer"

    def ready_details(self) -> dict[str, object]:
        config = self.service.config
        return {"world_size": config.world_size, "strategy": config.strategy, "step": self.service.host.state.step}

    async def release(self) -> None:
        if self.service.rollout is not None:
            await self.service.rollout.close()
        await self.service.host.stop()


async def start_trainer(config: TrainerConfig) -> RunningTrainer:
    """Health turns SERVING once every rank has loaded the model (and the newest checkpoint, if any)."""
    host = TrainerHost(config)
    try:
        await host.start()
    except BaseException:
        await host.stop()
        raise
    # Loading weights needs the control token: the trainer presents the one its own server accepts.
    rollout = (
        connect(RolloutClient, config.rollout_address, config.server.auth, timeout=3600)
        if config.rollout_address
        else None
    )
    service = TrainerService(config, host, rollout)
    server = await start_server(config.server, service, name="trainer")
    log.info(
        "trainer: %d rank(s), %s, %s at step %d on %s",
        config.world_size,
        config.strategy,
        config.model,
        host.state.step,
        server.address,
    )
    return RunningTrainer(server, service)
