"""Running one service process until SIGINT/SIGTERM (what every `mpo serve ...` and `mpo dashboard` do)."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import ray


class RunningService(Protocol):
    """What serving until a signal needs of a started service: every `mpo.serving.handle.ServiceHandle`
    has it, and so has the dashboard."""

    def ready_event(self) -> dict[str, Any]:
        """The JSON line printed once the service is ready (address, backend, ...)."""
        ...

    async def stop(self, grace: float | None = None) -> None:
        """Stop serving, letting in-flight calls finish for `grace` seconds (None: the configured grace)."""
        ...


async def host_on_ray(start: Callable[[], Awaitable[RunningService]], *, ray_address: str | None) -> None:
    """Join (or start) Ray, then `serve_until_signal`. After `ray.init`, which installs a SIGTERM handler
    of its own that exits at once."""
    ray.init(address=ray_address, namespace="mpo", include_dashboard=False, log_to_driver=False)
    try:
        await serve_until_signal(start)
    finally:
        ray.shutdown()


async def serve_until_signal(start: Callable[[], Awaitable[RunningService]]) -> None:
    """Start the service, print its ready line, serve until SIGINT/SIGTERM, then drain in-flight calls.
    The signal handlers go in first, so a signal that arrives while the service starts (or right after
    its ready line) still stops it gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    running = await start()
    drained = False
    try:
        print(json.dumps(running.ready_event()), flush=True)
        await stop.wait()
        drained = True
    finally:
        await running.stop(None if drained else 0)
