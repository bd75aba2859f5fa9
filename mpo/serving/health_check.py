"""`mpo client health`: ask servers' standard grpc.health.v1 Health service whether they are SERVING.

Made for Kubernetes exec probes on the head pod, where every driver listens: the native grpc probe
cannot speak TLS and dials the pod IP, while this runs inside the container against 127.0.0.1 (a TLS
server's plaintext loopback port). Health needs no token, and each check has a short deadline, so a
server that listens but no longer answers (a blocked event loop) fails the probe.
"""

from __future__ import annotations

import asyncio
import socket

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mpo.serving.clients import open_channel
from mpo.serving.server import OVERALL


def _host_and_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{address!r} is not host:port")
    return host.strip("[]"), int(port)


def _listening(address: str, timeout: float) -> bool:
    """Whether anything accepts TCP connections at `address`: a refused connection means no server."""
    try:
        with socket.create_connection(_host_and_port(address), timeout=timeout):
            return True
    except ConnectionRefusedError:
        return False


async def serving_status(channel: grpc.aio.Channel, timeout: float) -> int:
    """The whole server's grpc.health.v1 status (`HealthCheckResponse.SERVING`, ...); RPC errors propagate."""
    request = health_pb2.HealthCheckRequest(service=OVERALL)
    return (await health_pb2_grpc.HealthStub(channel).Check(request, timeout=timeout)).status


async def _problem(address: str, timeout: float, *, absent_ok: bool) -> str | None:
    """Why the server at `address` is not healthy; None when it is (or when absent and that is allowed)."""
    try:
        listening = await asyncio.to_thread(_listening, address, timeout)
    except OSError as exc:
        return f"{address}: cannot connect ({exc})"
    if not listening:
        return None if absent_ok else f"{address}: nothing listening (connection refused)"
    async with open_channel(address) as channel:
        try:
            status = await serving_status(channel, timeout)
        except grpc.aio.AioRpcError as exc:
            return f"{address}: no health answer within {timeout:g} s ({exc.code().name}: {exc.details()})"
    if status != health_pb2.HealthCheckResponse.SERVING:
        return f"{address}: {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}"
    return None


async def unhealthy(addresses: list[str], *, timeout: float, absent_ok: bool = False) -> list[str]:
    """One line per server that is not SERVING within `timeout` seconds, checked concurrently.

    `absent_ok`: a port with nothing listening passes (a liveness probe: a driver that exited is
    resubmitted by its RayJob, and restarting the pod would not bring it back sooner)."""
    problems = await asyncio.gather(*(_problem(a, timeout, absent_ok=absent_ok) for a in addresses))
    return [problem for problem in problems if problem is not None]
