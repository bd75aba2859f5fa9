"""How the controller calls the services: its clients, and the one retry policy every call of a round takes.

A round is the only place its calls are retried. The controller's channels have gRPC's transparent retry
off (`open_channel(retries=False)`), because that layer cannot carry a round: it replays a request only
while the request fits its retry buffer (256 KiB per call by default: a Train of a round's pairs, a
Generate with images, do not), caps attempts at 5, backs off for a second or two where an actor restart
takes longer, and counts every attempt against the one deadline of the call. Users' tools keep the
channel-level retry of `mpo.serving.clients`; the controller does not stack it under `RetryPolicy`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import grpc

from mpo.config import AuthConfig
from mpo.serving.auth import Credentials
from mpo.serving.clients import RewardClient, RolloutClient, TrainerClient

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Deadline of each attempt of a round's call: a round's Train or Generate can take long.
ATTEMPT_DEADLINE_S = 3600.0


@dataclass(frozen=True)
class RetryPolicy:
    """A call is repeated while the service answers a `retryable` code (UNAVAILABLE: an actor restarting
    behind it, a server not yet listening), at most `retries` times, after a backoff of `initial_backoff_s`
    multiplied by `multiplier` each time up to `max_backoff_s`; any other code fails at once. Each attempt
    has its own deadline (`ATTEMPT_DEADLINE_S`, the clients' default).

    Every call a round makes is idempotent, so repeating one whose answer was lost is safe:
    - Generate (the round's, seeded; the held-out one, greedy) and GetStatus only read;
    - BuildPairs and Score are functions of their request (pair choice and DropoutNTP seeded by the round);
    - Train skips the pair ids the trainer has trained, and runs to its end when the caller went away;
    - Checkpoint returns the checkpoint that already holds the state when nothing trained since (marking
      it best again is the same mark);
    - publishing is repeated as one unit, serving version first, then PublishWeights(serving + 1): the
      rollout service takes exactly serving + 1, so a publish whose answer was lost shows in the check.
    """

    retries: int = 5
    initial_backoff_s: float = 2.0
    multiplier: float = 2.0
    max_backoff_s: float = 30.0
    retryable: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE})

    def backoff(self, retry: int) -> float:
        """Seconds before retry number `retry` (0 for the first)."""
        return min(self.initial_backoff_s * self.multiplier**retry, self.max_backoff_s)

    async def call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """`call()` under this policy; `what` names it in the log."""
        retry = 0
        while True:
            try:
                return await call()
            except grpc.aio.AioRpcError as error:
                if error.code() not in self.retryable or retry == self.retries:
                    raise
                delay = self.backoff(retry)
                log.warning(
                    "%s: %s (%s); retry %d in %.1f s", what, error.code().name, error.details(), retry + 1, delay
                )
                await asyncio.sleep(delay)
                retry += 1


@dataclass
class ServiceClients:
    """The controller's clients of the three services a round calls."""

    rollout: RolloutClient
    reward: RewardClient
    trainer: TrainerClient

    @classmethod
    def connect(cls, addresses: Mapping[str, str], auth: AuthConfig) -> ServiceClients:
        """Clients of `addresses` (rollout, reward, trainer) on channels without transparent retry: the
        round's `RetryPolicy` is the only layer that repeats their calls. The controller trains and
        publishes, so they present the control token its own server accepts."""
        token, deadline = Credentials.from_env(auth).control, ATTEMPT_DEADLINE_S
        return cls(
            RolloutClient(addresses["rollout"], token=token, timeout=deadline, retries=False),
            RewardClient(addresses["reward"], token=token, timeout=deadline, retries=False),
            TrainerClient(addresses["trainer"], token=token, timeout=deadline, retries=False),
        )

    async def close(self) -> None:
        for client in (self.rollout, self.reward, self.trainer):
            await client.close()
