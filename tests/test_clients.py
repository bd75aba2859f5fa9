"""Typed clients: deadlines, and retries on UNAVAILABLE only (gRPC's retry policy), over real servers."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from mpo.net import free_port
from mpo.serving.clients import RolloutClient
from tests.grpc_helpers import ScriptedRollout, prompt, sampling, start_server

GENERATE = "/mpo.v1.RolloutService/Generate"


async def test_unavailable_is_retried_transparently() -> None:
    servicer = ScriptedRollout(flaky_failures=2)
    server = await start_server(servicer)
    try:
        async with RolloutClient(server.address) as client:
            response = await client.generate([prompt("flaky")], sampling())
        assert len(response.samples) == 2
        assert servicer.calls["Generate"] == 3  # two UNAVAILABLE attempts, then success
        assert server.metrics.count(GENERATE, "UNAVAILABLE") == 2
    finally:
        await server.stop(0)


async def test_other_errors_are_not_retried() -> None:
    servicer = ScriptedRollout()
    server = await start_server(servicer)
    try:
        async with RolloutClient(server.address) as client:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.generate([prompt("boom")], sampling())
            assert caught.value.code() == grpc.StatusCode.INTERNAL
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.generate([prompt()], sampling(n=0))
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert servicer.calls["Generate"] == 1
        assert server.metrics.count(GENERATE, "INVALID_ARGUMENT") == 1
    finally:
        await server.stop(0)


async def test_client_rides_out_a_server_that_is_still_starting() -> None:
    port = free_port()
    servicer = ScriptedRollout()

    async def late_start():
        await asyncio.sleep(0.25)
        return await start_server(servicer, port=port)

    starting = asyncio.ensure_future(late_start())
    async with RolloutClient(f"127.0.0.1:{port}") as client:
        response = await client.generate([prompt()], sampling())
    server = await starting
    await server.stop(0)
    assert len(response.samples) == 2


async def test_default_deadline_applies() -> None:
    server = await start_server(ScriptedRollout())
    try:
        async with RolloutClient(server.address, timeout=0.2) as client:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.generate([prompt("slow")], sampling())
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        await server.stop(0)


async def test_server_streaming_through_the_client() -> None:
    server = await start_server(ScriptedRollout())
    try:
        async with RolloutClient(server.address) as client:
            deltas = [m.text_delta async for m in client.generate_stream([prompt("one two three")], sampling())]
        assert deltas == ["one", "two", "three"]
    finally:
        await server.stop(0)
