"""Serving the dashboard app with uvicorn on the caller's event loop (the controller actor's, or the CLI's)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import uvicorn

from mpo.config import DashboardConfig
from mpo.services.dashboard.app import create_app
from mpo.services.dashboard.sources import DashboardSource
from mpo.serving.auth import is_loopback, read_token

log = logging.getLogger(__name__)


class _HostedServer(uvicorn.Server):
    """uvicorn on a loop it does not own: the host process (controller actor, CLI) handles the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class DashboardServer:
    server: uvicorn.Server
    task: asyncio.Task[None]
    url: str

    def ready_event(self) -> dict[str, object]:
        return {"event": "serving", "service": "dashboard", "url": self.url}

    async def stop(self, grace: float | None = None) -> None:
        """Stop serving; open event streams get uvicorn's graceful-shutdown timeout (`grace` is unused)."""
        self.server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def start_dashboard(source: DashboardSource, config: DashboardConfig) -> DashboardServer:
    """Serve the dashboard over `source` on `config.host:config.port`; returns once it accepts connections."""
    token = read_token(config.auth_token_env)
    if token is None and not config.open and not is_loopback(config.host):
        raise ValueError(
            f"dashboard: no token in ${config.auth_token_env}, and {config.host!r} is not a loopback address: "
            "set the token, or dashboard.open: true to show the runs to anyone who reaches the port"
        )
    app = create_app(source, token=token)
    server = _HostedServer(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=1,  # open event streams would otherwise hold the shutdown
        )
    )
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # the bind failed: raise its error
            raise RuntimeError(f"dashboard server on {config.host}:{config.port} stopped before it started")
        await asyncio.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    host = "127.0.0.1" if config.host in ("0.0.0.0", "::", "") else config.host
    url = f"http://{host}:{port}/"
    log.info("dashboard on %s (auth %s)", url, "on" if token else "off")
    return DashboardServer(server, task, url)
