"""Running one service process on Ray until SIGINT/SIGTERM (what every `mpo serve ...` does)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import ray

from mpo.services.common.server import ServiceServer


class RunningService(Protocol):
    server: ServiceServer

    def ready_event(self) -> dict[str, Any]:
        """The JSON line printed once the service is ready (address, backend, ...)."""
        ...

    async def stop(self, grace: float | None = None) -> None: ...


async def host_on_ray(start: Callable[[], Awaitable[RunningService]], *, ray_address: str | None) -> None:
    """Join (or start) Ray, start the service, print its ready line, serve until a signal, clean up."""
    ray.init(address=ray_address, namespace="mpo", include_dashboard=False, log_to_driver=False)
    try:
        running = await start()
        print(json.dumps(running.ready_event()), flush=True)
        try:
            await running.server.serve_until_signal()
        finally:
            await running.stop(0)
    finally:
        ray.shutdown()
