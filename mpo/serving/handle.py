"""What starting a service hands back, and the start-up steps every gRPC service shares.

A handle is what `mpo serve`, `mpo run` and the tests hold of a started service: its address, the JSON
line that says it is ready (`mpo.serving.hosting.RunningService`), and how to stop it. The rollout, reward
and trainer services serve from this process (`ServerHandle`); the controller serves from a Ray actor, so
its handle only shares the ready line. Each service adds what its line reports and what it frees.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from mpo.config import AuthConfig, ServerConfig
from mpo.serving.auth import Credentials
from mpo.serving.clients import ServiceClient
from mpo.serving.server import ServiceServer, bind
from mpo.serving.telemetry import RpcMetrics

Client = TypeVar("Client", bound=ServiceClient)


class ServiceHandle(ABC):
    """A started service: `name` and `address` make its ready line, `ready_details` adds the rest."""

    #: The `service` field of the ready line.
    name: ClassVar[str]
    address: str

    def ready_event(self) -> dict[str, object]:
        return {"event": "serving", "service": self.name, "address": self.address, **self.ready_details()}

    def ready_details(self) -> dict[str, object]:
        """What the ready line reports besides the service and its address."""
        return {}

    @abstractmethod
    async def stop(self, grace: float | None = None) -> None:
        """Stop serving, letting in-flight calls finish for `grace` seconds (None: the configured grace)."""


@dataclass
class ServerHandle(ServiceHandle):
    """A service whose gRPC server runs in this process."""

    server: ServiceServer

    @property
    def address(self) -> str:
        return self.server.address

    async def stop(self, grace: float | None = None) -> None:
        await self.server.stop(grace)
        await self.release()

    async def release(self) -> None:
        """Free what serving held besides the server (replicas, workers, ranks, clients): after it stops
        taking calls, so no call finds them gone."""


async def start_server(
    config: ServerConfig, servicer: Any, *, name: str, metrics: RpcMetrics | None = None
) -> ServiceServer:
    """Serve `servicer` with the shared plumbing; health turns SERVING at once, so start it only when the
    service can answer (engines, workers and ranks up)."""
    server = ServiceServer(config, [bind(servicer)], name=name, metrics=metrics)
    await server.start()
    await server.set_ready(True)
    return server


def connect(
    client: type[Client], address: str, auth: AuthConfig, *, timeout: float, sampling_only: bool = False
) -> Client:
    """A client of another service of the same deployment, presenting the token this service's own server
    accepts: the control token, or with `sampling_only` the user token where there is one (a caller that
    only samples needs no more)."""
    credentials = Credentials.from_env(auth)
    return client(address, token=credentials.for_sampling if sampling_only else credentials.control, timeout=timeout)
