"""One gRPC server bootstrap for every service (rollout, reward, trainer, controller).

A service hands over its servicers and a `ServerConfig`; it gets health (SERVING only once it says
it is ready), reflection, bearer-token auth (two credentials, checked before a body is read), optional
TLS (plus, optionally, a plaintext port on 127.0.0.1 for processes on the same host), message-size and
concurrency limits, request validation, Prometheus metrics, JSON request logs, and a graceful, draining
shutdown.
"""

from __future__ import annotations

import importlib
import logging
import sys
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from mpo.config import ServerConfig
from mpo.serving.auth import Authenticator, serving_credentials
from mpo.serving.guard import RpcGuard
from mpo.serving.telemetry import RpcMetrics

log = logging.getLogger(__name__)
OVERALL = ""  # health-check name that stands for the whole server


@dataclass(frozen=True)
class ServiceBinding:
    """A servicer plus what registering it needs; build it with `bind`."""

    full_name: str
    servicer: Any
    add_to_server: Any


def bind(servicer: Any) -> ServiceBinding:
    """Find the generated `*Servicer` base of `servicer` and the matching registration function."""
    for base in type(servicer).__mro__:
        module = sys.modules.get(base.__module__)
        if module is None or not module.__name__.endswith("_pb2_grpc") or not base.__name__.endswith("Servicer"):
            continue
        service = base.__name__.removesuffix("Servicer")
        messages = importlib.import_module(module.__name__.removesuffix("_grpc"))
        return ServiceBinding(
            full_name=messages.DESCRIPTOR.services_by_name[service].full_name,
            servicer=servicer,
            add_to_server=getattr(module, f"add_{base.__name__}_to_server"),
        )
    raise TypeError(f"{type(servicer).__name__} does not derive from a generated *Servicer class")


class ServiceServer:
    """A started-on-demand `grpc.aio` server wrapping the given services with the shared plumbing."""

    def __init__(
        self, config: ServerConfig, services: list[ServiceBinding], *, name: str, metrics: RpcMetrics | None = None
    ) -> None:
        """`metrics`: a registry the service also adds its own metrics to, served on the same endpoint."""
        if not services:
            raise ValueError("a server needs at least one service")
        self.config, self.name, self.services = config, name, services
        self.metrics = metrics or RpcMetrics()
        self._health = health_aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._metrics_http: Any = None
        self.port: int = 0
        self.loopback_port: int | None = None

    @property
    def address(self) -> str:
        return f"{self.config.host}:{self.port}"

    async def start(self) -> None:
        """Raises ValueError (before binding) when auth is misconfigured (see `serving_credentials`) or when
        `loopback_port` is set without TLS."""
        config = self.config
        tls = config.tls_cert_file is not None and config.tls_key_file is not None
        if config.loopback_port is not None and not tls:
            # Refused rather than ignored: without TLS the main port is already plaintext, so a second port
            # is almost surely a config that meant to turn TLS on and forgot the certificate.
            raise ValueError(
                f"{self.name}: loopback_port is set but TLS is off (no tls_cert_file/tls_key_file); the main port "
                "already serves plaintext: unset loopback_port, or set the certificate and key"
            )
        credentials = serving_credentials(config.auth, config.host, self.name)
        server = grpc.aio.server(
            interceptors=[
                RpcGuard(
                    service=self.name,
                    authenticator=Authenticator(credentials),
                    limits=config.limits,
                    metrics=self.metrics,
                    max_calls=config.max_concurrent_rpcs,
                    max_infrastructure_calls=config.max_infrastructure_calls,
                )
            ],
            options=[
                ("grpc.max_send_message_length", config.max_message_bytes),
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
            # The guard keeps the two budgets apart; this outer bound refuses a flood before any handler.
            maximum_concurrent_rpcs=config.max_concurrent_rpcs + config.max_infrastructure_calls,
        )
        for service in self.services:
            service.add_to_server(service.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        names = [s.full_name for s in self.services]
        reflection.enable_server_reflection(
            [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server
        )
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)

        target = f"{config.host}:{config.port}"
        if config.tls_cert_file is not None and config.tls_key_file is not None:
            keys = [(config.tls_key_file.read_bytes(), config.tls_cert_file.read_bytes())]
            self.port = server.add_secure_port(target, grpc.ssl_server_credentials(keys))
        else:
            self.port = server.add_insecure_port(target)
        if self.port == 0:
            raise OSError(f"{self.name}: could not bind {target}")
        if config.loopback_port is not None:
            # Same server, so the same interceptors: the tokens apply here too; only the transport is plain.
            loopback = f"127.0.0.1:{config.loopback_port}"
            self.loopback_port = server.add_insecure_port(loopback)
            if self.loopback_port == 0:
                raise OSError(f"{self.name}: could not bind {loopback}")
        await server.start()
        self._server = server
        if config.metrics_port is not None:
            self._metrics_http, _ = start_http_server(
                config.metrics_port, addr=config.host, registry=self.metrics.registry
            )
        log.info(
            "%s serving %s on %s (tls=%s, plaintext loopback port=%s, auth=%s)",
            self.name,
            ", ".join(names),
            self.address,
            tls,
            self.loopback_port,
            "two tokens" if credentials.user else "control token" if credentials.control else "off",
        )

    @property
    def metrics_port(self) -> int | None:
        return self._metrics_http.server_port if self._metrics_http is not None else None

    async def set_ready(self, ready: bool) -> None:
        """Health reports SERVING only while the service says its engine/model is ready."""
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        await self._set_health(status)

    async def _set_health(self, status: int) -> None:
        for name in [OVERALL, *(s.full_name for s in self.services)]:
            await self._health.set(name, status)

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking calls, let in-flight ones finish for `grace` seconds, then close."""
        if self._server is None:
            return
        await self._health.enter_graceful_shutdown()
        await self._server.stop(self.config.shutdown_grace_seconds if grace is None else grace)
        self._server = None
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
            self._metrics_http = None
        log.info("%s stopped", self.name)
