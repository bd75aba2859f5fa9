"""The shared gRPC server bootstrap, end to end over real sockets with a real grpc.aio server."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import urllib.request
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mpo.config import AuthConfig, ServerConfig
from mpo.serving.auth import USER_METHODS, Access, access_for, bearer_metadata
from mpo.serving.clients import RolloutClient
from mpo.serving.server import ServiceServer, bind
from mpo.v1 import rollout_pb2, rollout_pb2_grpc
from tests.grpc_helpers import ScriptedRollout, generate_request, prompt, sampling, start_server

GENERATE = "/mpo.v1.RolloutService/Generate"


@pytest.fixture
async def served():
    servicer = ScriptedRollout()
    server = await start_server(servicer)
    await server.set_ready(True)
    channel = grpc.aio.insecure_channel(server.address)
    yield servicer, server, rollout_pb2_grpc.RolloutServiceStub(channel)
    await channel.close()
    await server.stop(0)


async def health(address: str, service: str = "") -> int:
    async with grpc.aio.insecure_channel(address) as channel:
        response = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service))
        return response.status


async def test_health_is_serving_only_while_ready() -> None:
    server = await start_server(ScriptedRollout())
    try:
        assert await health(server.address) == health_pb2.HealthCheckResponse.NOT_SERVING
        await server.set_ready(True)
        assert await health(server.address) == health_pb2.HealthCheckResponse.SERVING
        assert await health(server.address, "mpo.v1.RolloutService") == health_pb2.HealthCheckResponse.SERVING
        await server.set_ready(False)
        assert await health(server.address, "mpo.v1.RolloutService") == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await server.stop(0)


async def test_reflection_lists_services_for_an_outside_client(served) -> None:
    from grpc_requests import Client

    _, server, _ = served

    def outside_client() -> tuple[list[str], dict]:
        client = Client(server.address)
        reply = client.request(
            "mpo.v1.RolloutService",
            "Generate",
            {"prompts": [{"id": "a", "question": "hi there", "task": "arith"}], "sampling": {"n": 1, "max_tokens": 4}},
        )
        return client.service_names, reply

    names, reply = await asyncio.to_thread(outside_client)
    assert "mpo.v1.RolloutService" in names
    assert "grpc.health.v1.Health" in names
    assert reply["samples"][0]["text"] == "hi there"


async def test_valid_call_and_request_id_round_trip(served, caplog) -> None:
    _, _, stub = served
    caplog.set_level(logging.INFO, logger="mpo.rpc")
    call = stub.Generate(generate_request(), metadata=(("x-request-id", "req-42"),))
    response = await call
    assert [s.text for s in response.samples] == ["What is 2 + 3?"] * 2
    assert ("x-request-id", "req-42") in tuple(await call.trailing_metadata())
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "mpo.rpc"]
    assert {"method": GENERATE, "request_id": "req-42", "code": "OK"}.items() <= records[-1].items()


@pytest.mark.parametrize(
    ("request_message", "field"),
    [
        (rollout_pb2.GenerateRequest(sampling=sampling()), "prompts"),
        (generate_request(n=0), "sampling.n"),
        (generate_request(temperature=-0.5), "sampling.temperature"),
        (generate_request(max_tokens=65), "sampling.max_tokens"),
        (
            rollout_pb2.GenerateRequest(prompts=[prompt(task="poetry")], sampling=sampling()),
            "prompts[0].task",
        ),
        (
            rollout_pb2.GenerateRequest(prompts=[prompt(prompt_id=f"p{i}") for i in range(5)], sampling=sampling()),
            "prompts",
        ),
    ],
)
async def test_bad_requests_are_rejected_and_the_server_keeps_serving(served, request_message, field) -> None:
    servicer, server, stub = served
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Generate(request_message)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"{field}: ")
    assert servicer.calls["Generate"] == 0, "a rejected request must not reach the service logic"
    assert len((await stub.Generate(generate_request())).samples) == 2
    assert server.metrics.count(GENERATE, "INVALID_ARGUMENT") == 1


async def test_undecodable_image_is_invalid_argument(served) -> None:
    _, _, stub = served
    bad = prompt()
    bad.images.add(data=b"\x89PNG not really")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Generate(rollout_pb2.GenerateRequest(prompts=[bad], sampling=sampling()))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("prompts[0].images[0].data: ")


async def test_unparsable_bytes_are_invalid_argument_not_internal(served) -> None:
    _, server, stub = served
    async with grpc.aio.insecure_channel(server.address) as channel:
        raw = channel.unary_unary(GENERATE)  # no serializers: bytes on the wire as given
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await raw(b"\xff\xff\xff\x0f garbage")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid mpo.v1.GenerateRequest" in caught.value.details()
    assert len((await stub.Generate(generate_request())).samples) == 2


async def test_handler_crash_is_internal_and_the_server_survives(served) -> None:
    _, _, stub = served
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Generate(generate_request("boom"), metadata=(("x-request-id", "crash-1"),))
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "crash-1" in caught.value.details()
    assert "exploded" not in caught.value.details(), "internal error text must not leak to clients"
    assert ("x-request-id", "crash-1") in tuple(caught.value.trailing_metadata())
    assert len((await stub.Generate(generate_request())).samples) == 2


async def test_deadline_exceeded(served) -> None:
    _, _, stub = served
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Generate(generate_request("slow"), timeout=0.2)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_overload_is_resource_exhausted() -> None:
    servicer = ScriptedRollout()
    server = await start_server(servicer, max_concurrent_rpcs=1)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = rollout_pb2_grpc.RolloutServiceStub(channel)
            slow = asyncio.ensure_future(stub.Generate(generate_request("slow")))
            await asyncio.sleep(0.3)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Generate(generate_request())
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert len((await slow).samples) == 2
    finally:
        await server.stop(0)


async def test_graceful_shutdown_completes_in_flight_calls() -> None:
    server = await start_server(ScriptedRollout())
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = rollout_pb2_grpc.RolloutServiceStub(channel)
        slow = asyncio.ensure_future(stub.Generate(generate_request("slow")))
        await asyncio.sleep(0.3)
        await server.stop(grace=5)
        assert len((await slow).samples) == 2, "the in-flight call must finish during the grace period"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Generate(generate_request(), timeout=2)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


CONTROL, USER = "c0ntrol-token", "us3r-token"


@pytest.fixture
def two_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MPO_CONTROL_TOKEN", CONTROL)
    monkeypatch.setenv("MPO_USER_TOKEN", USER)


async def test_bearer_tokens_grant_user_and_control_calls(two_tokens) -> None:
    servicer = ScriptedRollout()
    server = await start_server(servicer)
    await server.set_ready(True)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = rollout_pb2_grpc.RolloutServiceStub(channel)
            for metadata in [(), bearer_metadata("wrong"), (("authorization", CONTROL),)]:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.Generate(generate_request(), metadata=metadata)
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert servicer.calls["Generate"] == 0
            for token in (USER, CONTROL):  # the control token may do everything the user token may
                assert len((await stub.Generate(generate_request(), metadata=bearer_metadata(token))).samples) == 2
        # Health stays reachable for load balancers without the token.
        assert await health(server.address) == health_pb2.HealthCheckResponse.SERVING
        manifest = rollout_pb2.WeightManifest(
            version=1, tensor_count=1, total_bytes=6, sha256="0" * 64, format="safetensors"
        )
        async with RolloutClient(server.address, token=USER) as client:
            assert (await client.status()).policy_version == 7
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.load_weights(manifest, [b"abc", b"def"])
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "LoadWeights needs the control token" in (caught.value.details() or "")
        assert servicer.calls["LoadWeights"] == 0
        async with RolloutClient(server.address, token=CONTROL) as client:
            assert (await client.load_weights(manifest, [b"abc", b"def"])).bytes_received == 6
    finally:
        await server.stop(0)


def test_every_method_needs_a_credential_and_only_reads_take_the_user_token() -> None:
    """Fail closed: a method nobody classified needs the control token."""
    from google.protobuf import descriptor_pool

    from mpo.v1 import controller_pb2, reward_pb2, trainer_pb2  # noqa: F401 (registers the services)

    pool = descriptor_pool.Default()
    methods = {
        f"/{service.full_name}/{method.name}"
        for name in ("RolloutService", "RewardService", "TrainerService", "ControllerService")
        for service in [pool.FindServiceByName(f"mpo.v1.{name}")]
        for method in service.methods
    }
    assert methods >= USER_METHODS, "a user method that no service has"
    control = {m for m in methods if access_for(m) is Access.CONTROL}
    assert control == {
        "/mpo.v1.RolloutService/LoadWeights",
        "/mpo.v1.RolloutService/LoadWeightsFromStorage",
        "/mpo.v1.TrainerService/Train",
        "/mpo.v1.TrainerService/Checkpoint",
        "/mpo.v1.TrainerService/PublishWeights",
        "/mpo.v1.ControllerService/StartRun",
        "/mpo.v1.ControllerService/PauseRun",
        "/mpo.v1.ControllerService/ResumeRun",
        "/mpo.v1.ControllerService/StopRun",
    }
    assert access_for("/mpo.v1.RolloutService/SomethingNew") is Access.CONTROL
    assert access_for("/grpc.health.v1.Health/Watch") is Access.OPEN


@pytest.mark.parametrize(
    ("environment", "host", "problem"),
    [
        ({}, "127.0.0.1", None),  # loopback: open without tokens, like a developer's machine
        ({}, "localhost", None),
        ({}, "0.0.0.0", "is not a loopback address"),
        ({"MPO_CONTROL_TOKEN": ""}, "127.0.0.1", "MPO_CONTROL_TOKEN is set but empty"),
        ({"MPO_CONTROL_TOKEN": "c", "MPO_USER_TOKEN": " "}, "0.0.0.0", "MPO_USER_TOKEN is set but empty"),
        ({"MPO_USER_TOKEN": "u"}, "0.0.0.0", "MPO_CONTROL_TOKEN is not"),
        ({"MPO_CONTROL_TOKEN": "same", "MPO_USER_TOKEN": "same"}, "0.0.0.0", "use two different tokens"),
        ({"MPO_CONTROL_TOKEN": "c"}, "0.0.0.0", None),
    ],
)
async def test_a_server_without_a_token_serves_only_loopback_unless_open(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], host: str, problem: str | None
) -> None:
    for name in ("MPO_CONTROL_TOKEN", "MPO_USER_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    server = ServiceServer(ServerConfig(host=host), [bind(ScriptedRollout())], name="rollout-test")
    if problem is None:
        await server.start()
        await server.stop(0)
        return
    with pytest.raises(ValueError, match=problem):
        await server.start()
    assert server.port == 0, "refused before binding"
    if "loopback" in problem:  # the explicit open mode is the one way past it
        server = ServiceServer(
            ServerConfig(host=host, auth=AuthConfig(open=True)), [bind(ScriptedRollout())], name="rollout-test"
        )
        await server.start()
        await server.stop(0)


async def test_idle_health_watches_have_their_own_budget_and_never_starve_real_calls() -> None:
    server = await start_server(ScriptedRollout(), max_concurrent_rpcs=2, max_infrastructure_calls=3)
    await server.set_ready(True)
    try:
        async with grpc.aio.insecure_channel(server.address, options=[("grpc.enable_retries", 0)]) as channel:
            health_stub = health_pb2_grpc.HealthStub(channel)
            watches = [health_stub.Watch(health_pb2.HealthCheckRequest()) for _ in range(3)]
            for watch in watches:  # each stream is open (its first status arrived) and then idles
                assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await health_stub.Check(health_pb2.HealthCheckRequest())
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_infrastructure_calls" in (caught.value.details() or "")
            stub = rollout_pb2_grpc.RolloutServiceStub(channel)
            for _ in range(3):  # more than max_concurrent_rpcs in sequence: real calls have every slot
                assert len((await stub.Generate(generate_request())).samples) == 2
            for watch in watches:
                watch.cancel()
            await asyncio.sleep(0.2)
            assert (await health_stub.Check(health_pb2.HealthCheckRequest())).status == 1, "slots come back"
    finally:
        await server.stop(0)


async def test_prometheus_metrics_endpoint(served) -> None:
    _, server, stub = served
    await stub.Generate(generate_request())
    metrics_server = await start_server(ScriptedRollout(), metrics_port=0)
    try:
        async with grpc.aio.insecure_channel(metrics_server.address) as channel:
            await rollout_pb2_grpc.RolloutServiceStub(channel).Generate(generate_request())
        url = f"http://127.0.0.1:{metrics_server.metrics_port}/metrics"
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
        assert f'mpo_rpc_requests_total{{code="OK",method="{GENERATE}"}} 1.0' in text
        assert "mpo_rpc_latency_seconds_bucket" in text
    finally:
        await metrics_server.stop(0)
    assert server.metrics.count(GENERATE, "OK") == 1


async def test_client_stream_is_validated_message_by_message(served) -> None:
    servicer, _, stub = served

    async def chunk_first():
        yield rollout_pb2.LoadWeightsRequest(chunk=rollout_pb2.WeightChunk(index=0, payload=b"x"))

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.LoadWeights(chunk_first())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "manifest" in caught.value.details()

    async with RolloutClient(served[1].address) as client:
        manifest = rollout_pb2.WeightManifest(
            version=1, tensor_count=1, total_bytes=6, sha256="0" * 64, format="safetensors"
        )
        reply = await client.load_weights(manifest, [b"abc", b"def"])
    assert reply.bytes_received == 6 == servicer.weights_bytes


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


async def test_tls(tmp_path: Path) -> None:
    cert_file, key_file = _self_signed(tmp_path)
    server = await start_server(ScriptedRollout(), host="localhost", tls_cert_file=cert_file, tls_key_file=key_file)
    try:
        async with RolloutClient(server.address, tls_root_cert=cert_file) as client:
            assert len((await client.generate([prompt()], sampling())).samples) == 2
        async with grpc.aio.insecure_channel(server.address) as plain:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await rollout_pb2_grpc.RolloutServiceStub(plain).Generate(generate_request(), timeout=2)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)


def test_bind_requires_a_generated_servicer() -> None:
    with pytest.raises(TypeError, match="generated"):
        bind(object())
    assert bind(ScriptedRollout()).full_name == "mpo.v1.RolloutService"


async def test_large_requests_are_validated_off_the_event_loop(served) -> None:
    import io
    import os

    from PIL import Image

    _, _, stub = served
    noise = Image.frombytes("RGB", (200, 200), os.urandom(200 * 200 * 3))
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG")
    assert len(buffer.getvalue()) > 64 * 1024  # above INLINE_VALIDATION_BYTES: takes the thread path
    good = prompt()
    good.images.add(data=buffer.getvalue())
    assert len((await stub.Generate(rollout_pb2.GenerateRequest(prompts=[good], sampling=sampling()))).samples) == 2

    corrupt = prompt()
    corrupt.images.add(data=buffer.getvalue()[:-4096])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Generate(rollout_pb2.GenerateRequest(prompts=[corrupt], sampling=sampling()))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith("prompts[0].images[0].data: ")


async def test_messages_over_the_size_limit_are_refused() -> None:
    servicer = ScriptedRollout()
    server = await start_server(servicer, max_message_bytes=2048)
    try:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = rollout_pb2_grpc.RolloutServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Generate(generate_request("x" * 5000))
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert servicer.calls["Generate"] == 0
            assert len((await stub.Generate(generate_request())).samples) == 2
    finally:
        await server.stop(0)
