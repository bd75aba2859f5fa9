"""A TLS server's plaintext loopback port, and `mpo client health` (the head pod's liveness probe), against
real servers: the shared gRPC server with a scripted rollout servicer (tests/grpc_helpers.py)."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from mpo.net import free_port
from mpo.serving.clients import RolloutClient
from mpo.serving.server import ServiceServer
from mpo.v1 import rollout_pb2_grpc
from tests.grpc_helpers import ScriptedRollout, generate_request, prompt, sampling, start_server
from tests.test_server_plumbing import _self_signed

CONTROL, USER = "control-token-for-tests", "user-token-for-tests"


@pytest.fixture
async def tls_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ServiceServer]:
    """TLS on its port (certificate for 'localhost'), plaintext on 127.0.0.1 at a free loopback port, two tokens."""
    monkeypatch.setenv("MPO_CONTROL_TOKEN", CONTROL)
    monkeypatch.setenv("MPO_USER_TOKEN", USER)
    cert_file, key_file = _self_signed(tmp_path)
    server = await start_server(
        ScriptedRollout(), host="localhost", tls_cert_file=cert_file, tls_key_file=key_file, loopback_port=0
    )
    await server.set_ready(True)
    try:
        yield server
    finally:
        await server.stop(0)


async def test_a_tls_server_serves_plaintext_only_on_its_loopback_port(tls_server: ServiceServer, tmp_path) -> None:
    assert tls_server.loopback_port and tls_server.loopback_port != tls_server.port
    async with RolloutClient(tls_server.address, token=USER, tls_root_cert=tmp_path / "cert.pem") as client:
        assert len((await client.generate([prompt()], sampling())).samples) == 2

    async with grpc.aio.insecure_channel(tls_server.address) as plain:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await rollout_pb2_grpc.RolloutServiceStub(plain).Generate(generate_request(), timeout=2)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, "the TLS port refuses a plaintext client"

    loopback = f"127.0.0.1:{tls_server.loopback_port}"
    async with RolloutClient(loopback, token=USER) as client:
        assert len((await client.generate([prompt()], sampling())).samples) == 2
    async with RolloutClient(loopback) as anonymous:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await anonymous.generate([prompt()], sampling())
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED, "the loopback port still wants a token"


async def test_a_loopback_port_without_tls_is_refused_before_binding() -> None:
    with pytest.raises(ValueError, match="loopback_port is set but TLS is off"):
        await start_server(ScriptedRollout(), loopback_port=0)


async def mpo_client_health(*args: str) -> tuple[int, list[str]]:
    """The real command line in a subprocess (as the exec probe runs it), without any token in its env."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MPO_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mpo.cli", "client", "health", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stderr.decode().splitlines()


def _refusing_address() -> str:
    """An address where nothing listens: a port bound and closed again."""
    return f"127.0.0.1:{free_port()}"


async def test_health_passes_only_when_every_server_is_serving(tls_server: ServiceServer) -> None:
    loopback = f"--address=127.0.0.1:{tls_server.loopback_port}"
    assert await mpo_client_health(loopback) == (0, []), "health needs no token, even on a server with tokens"

    absent = _refusing_address()
    code, lines = await mpo_client_health(loopback, f"--address={absent}")
    assert code == 1 and lines == [f"unhealthy: {absent}: nothing listening (connection refused)"]
    assert await mpo_client_health(loopback, f"--address={absent}", "--absent-ok") == (0, [])

    await tls_server.set_ready(False)
    code, lines = await mpo_client_health(loopback, "--absent-ok")
    assert code == 1 and lines == [f"unhealthy: 127.0.0.1:{tls_server.loopback_port}: NOT_SERVING"]


async def test_health_fails_a_server_that_listens_but_never_answers() -> None:
    """What the liveness probe is for: a wedged server accepts the connection and says nothing."""
    with socket.create_server(("127.0.0.1", 0)) as mute:
        address = f"127.0.0.1:{mute.getsockname()[1]}"
        code, lines = await mpo_client_health(f"--address={address}", "--absent-ok", "--timeout=1")
    assert code == 1 and len(lines) == 1
    assert lines[0].startswith(f"unhealthy: {address}: no health answer within 1 s (DEADLINE_EXCEEDED")
