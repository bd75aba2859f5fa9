"""Starting the rollout service: replicas on Ray, then the gRPC ingress in front of them."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mpo.config import RolloutConfig
from mpo.services.rollout.pool import ReplicaPool
from mpo.services.rollout.service import RolloutService
from mpo.serving.handle import ServerHandle, start_server

log = logging.getLogger(__name__)


@dataclass
class RunningRollout(ServerHandle):
    pool: ReplicaPool
    service: RolloutService
    name = "rollout"

    def ready_details(self) -> dict[str, object]:
        return {"backend": self.service.backend, "policy_version": self.service.version}

    async def release(self) -> None:
        await self.pool.shutdown()


async def start_rollout(config: RolloutConfig) -> RunningRollout:
    """Health turns SERVING only once every replica has its engine up with the committed weights."""
    pool = ReplicaPool(config)
    try:
        described = await pool.wait_ready()
    except BaseException:
        await pool.shutdown()
        raise
    version, _, description = described[0]
    service = RolloutService(config, pool, max_model_len=description.max_model_len, backend=description.backend)
    server = await start_server(config.server, service, name="rollout")
    log.info(
        "rollout: %d x %s on %s serving %s at policy version %d on %s",
        config.replicas, description.backend, description.device, config.model, version, server.address,
    )  # fmt: skip
    return RunningRollout(server, pool, service)
