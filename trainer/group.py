"""The rank actors as one unit: placed together, set up together, called together, failed together.

A collective call that loses one rank leaves the others blocked inside a collective, so the first
failure kills the whole group; `TrainerHost` then starts a fresh one from the last checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from mpo.config import TrainerConfig
from mpo.trainer.rank import TrainerRank

log = logging.getLogger(__name__)

#: How long the ranks' resources may take to appear (autoscaling clusters add nodes in minutes).
PLACEMENT_TIMEOUT_S = 600.0


class RankFailure(RuntimeError):
    """A rank failed during a group call; the group has been torn down. `died`: the process was lost
    (killed, out of memory, node gone), so the same call can succeed on a fresh group; otherwise the
    rank raised, and retrying would raise again."""

    def __init__(self, message: str, *, died: bool) -> None:
        super().__init__(message)
        self.died = died


class TrainerGroup:
    def __init__(self, config: TrainerConfig) -> None:
        self.config = config
        self.ranks: list[Any] = []
        self._placement: PlacementGroup | None = None

    async def start(self) -> list[dict[str, Any]]:
        config = self.config
        devices = {"CPU": config.num_cpus_per_rank, "GPU": config.num_gpus_per_rank, **config.ray_resources}
        bundle = {key: value for key, value in devices.items() if value}
        options: dict[str, Any] = {
            "num_cpus": config.num_cpus_per_rank,
            "num_gpus": config.num_gpus_per_rank,
            "resources": config.ray_resources,
        }
        remote = ray.remote(TrainerRank)
        if bundle:  # a placement group keeps the ranks' devices reserved together (and packed on few nodes)
            self._placement = placement_group([bundle] * config.world_size, strategy="PACK")
            try:
                await asyncio.wait_for(self._placement.ready(), timeout=PLACEMENT_TIMEOUT_S)
            except TimeoutError:
                await self.stop()
                raise RankFailure(
                    f"the Ray cluster cannot place {config.world_size} trainer ranks of {bundle} within "
                    f"{PLACEMENT_TIMEOUT_S:.0f} s (num_cpus_per_rank / num_gpus_per_rank too large, or no node "
                    "offers ray_resources?)",
                    died=False,
                ) from None
        self.ranks = []
        for rank in range(config.world_size):
            if self._placement is not None:
                strategy = PlacementGroupSchedulingStrategy(self._placement, placement_group_bundle_index=rank)
                options["scheduling_strategy"] = strategy
            self.ranks.append(remote.options(**options).remote(config, rank))
        try:
            master_addr, master_port = await self.ranks[0].rendezvous.remote()
        except ray.exceptions.RayActorError as error:  # e.g. its constructor refused the config
            await self.stop()
            raise RankFailure(f"trainer rank 0 did not start: {error}", died=True) from error
        return await self.call("setup", master_addr, master_port)

    async def call(self, method: str, *args: Any) -> list[Any]:
        """`method(*args)` on every rank at once; results in rank order."""
        if not self.ranks:
            raise RankFailure("the trainer group is not running", died=True)
        futures = [asyncio.ensure_future(self._await(getattr(rank, method).remote(*args))) for rank in self.ranks]
        done, pending = await asyncio.wait(futures, return_when=asyncio.FIRST_EXCEPTION)
        failed = next((f for f in done if f.exception() is not None), None)
        if failed is None:
            return [f.result() for f in futures]
        error = failed.exception()
        for future in pending:
            future.cancel()
        await self.stop()
        # A rank's actor died, or its node did: then even a result it had returned is lost with the node's
        # object store (ObjectLostError, e.g. the weights a publish gathers). Either way, a restart is the cure.
        died = isinstance(error, ray.exceptions.RayActorError | ray.exceptions.ObjectLostError)
        raise RankFailure(f"{method} failed on a trainer rank: {error}", died=died) from error

    @staticmethod
    async def _await(ref: Any) -> Any:
        return await ref

    async def stop(self) -> None:
        for rank in self.ranks:
            ray.kill(rank, no_restart=True)
        self.ranks = []
        if self._placement is not None:
            remove_placement_group(self._placement)
            self._placement = None
