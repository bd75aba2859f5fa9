"""Typed async clients for the four services: deadlines on every call, retries on UNAVAILABLE only.

Retries use gRPC's own retry policy (service config), so they are transparent, bounded and backed
off, and never repeat a call that the server actually rejected or that partly streamed. A caller with
its own retry policy turns them off (`retries=False`): the controller's round does
(services/controller/retry.py), so no call is retried by two layers.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import grpc

from mpo.serving.auth import bearer_metadata
from mpo.v1 import (
    common_pb2,
    controller_pb2,
    controller_pb2_grpc,
    reward_pb2,
    reward_pb2_grpc,
    rollout_pb2,
    rollout_pb2_grpc,
    trainer_pb2,
    trainer_pb2_grpc,
)

#: Retry transient connection failures (server restarting, not yet listening); nothing else.
RETRY_SERVICE_CONFIG = {
    "methodConfig": [
        {
            "name": [
                {"service": f"mpo.v1.{s}"}
                for s in ("RolloutService", "RewardService", "TrainerService", "ControllerService")
            ],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.1s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}


def open_channel(
    address: str,
    *,
    max_message_bytes: int = 256 * 2**20,
    tls_root_cert: Path | None = None,
    retries: bool = True,
) -> grpc.aio.Channel:
    """`retries`: gRPC's transparent retry of UNAVAILABLE (`RETRY_SERVICE_CONFIG`); off, every status
    reaches the caller as the server sent it."""
    options: list[tuple[str, int | str]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.enable_retries", int(retries)),
    ]
    if retries:
        options.append(("grpc.service_config", json.dumps(RETRY_SERVICE_CONFIG)))
    if tls_root_cert is not None:
        credentials = grpc.ssl_channel_credentials(root_certificates=tls_root_cert.read_bytes())
        return grpc.aio.secure_channel(address, credentials, options=options)
    return grpc.aio.insecure_channel(address, options=options)


class ServiceClient:
    """Base: one channel, the auth metadata, and a default deadline applied to every call."""

    stub_class: type

    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        timeout: float = 60.0,
        tls_root_cert: Path | None = None,
        channel: grpc.aio.Channel | None = None,
        retries: bool = True,
    ) -> None:
        self.address = address
        self.channel = channel or open_channel(address, tls_root_cert=tls_root_cert, retries=retries)
        self.stub = self.stub_class(self.channel)
        self._metadata = bearer_metadata(token)
        self.timeout = timeout

    def _options(self, timeout: float | None) -> dict[str, Any]:
        return {"timeout": self.timeout if timeout is None else timeout, "metadata": self._metadata}

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> ServiceClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class RolloutClient(ServiceClient):
    stub_class = rollout_pb2_grpc.RolloutServiceStub

    async def generate(
        self, prompts: Iterable[common_pb2.Prompt], sampling: common_pb2.SamplingParams, *, timeout: float | None = None
    ) -> rollout_pb2.GenerateResponse:
        request = rollout_pb2.GenerateRequest(prompts=prompts, sampling=sampling)
        return await self.stub.Generate(request, **self._options(timeout))

    def generate_stream(
        self, prompts: Iterable[common_pb2.Prompt], sampling: common_pb2.SamplingParams, *, timeout: float | None = None
    ) -> AsyncIterator[rollout_pb2.GenerateStreamResponse]:
        request = rollout_pb2.GenerateStreamRequest(prompts=prompts, sampling=sampling)
        return self.stub.GenerateStream(request, **self._options(timeout))

    async def continue_prefixes(
        self,
        continuations: Iterable[rollout_pb2.Continuation],
        sampling: common_pb2.SamplingParams,
        *,
        timeout: float | None = None,
    ) -> rollout_pb2.ContinueResponse:
        request = rollout_pb2.ContinueRequest(continuations=continuations, sampling=sampling)
        return await self.stub.Continue(request, **self._options(timeout))

    async def load_weights(
        self, manifest: rollout_pb2.WeightManifest, payloads: Iterable[bytes], *, timeout: float | None = None
    ) -> rollout_pb2.LoadWeightsResponse:
        """Stream the manifest, then each payload as a chunk, in order."""

        async def messages() -> AsyncIterator[rollout_pb2.LoadWeightsRequest]:
            yield rollout_pb2.LoadWeightsRequest(manifest=manifest)
            for index, payload in enumerate(payloads):
                yield rollout_pb2.LoadWeightsRequest(chunk=rollout_pb2.WeightChunk(index=index, payload=payload))

        return await self.stub.LoadWeights(messages(), **self._options(timeout))

    async def load_weights_from_storage(
        self, manifest: rollout_pb2.WeightManifest, uri: str, *, timeout: float | None = None
    ) -> rollout_pb2.LoadWeightsFromStorageResponse:
        request = rollout_pb2.LoadWeightsFromStorageRequest(manifest=manifest, uri=uri)
        return await self.stub.LoadWeightsFromStorage(request, **self._options(timeout))

    async def status(self, *, timeout: float | None = None) -> rollout_pb2.GetStatusResponse:
        return await self.stub.GetStatus(rollout_pb2.GetStatusRequest(), **self._options(timeout))


class RewardClient(ServiceClient):
    stub_class = reward_pb2_grpc.RewardServiceStub

    async def score(
        self,
        prompts: Iterable[common_pb2.Prompt],
        samples: Iterable[common_pb2.Sample],
        *,
        timeout: float | None = None,
    ) -> reward_pb2.ScoreResponse:
        request = reward_pb2.ScoreRequest(prompts=prompts, samples=samples)
        return await self.stub.Score(request, **self._options(timeout))

    async def build_pairs(
        self,
        prompts: Iterable[common_pb2.Prompt],
        samples: Iterable[common_pb2.Sample],
        *,
        round: int,
        options: reward_pb2.PairOptions | None = None,
        timeout: float | None = None,
    ) -> reward_pb2.BuildPairsResponse:
        request = reward_pb2.BuildPairsRequest(prompts=prompts, samples=samples, round=round, options=options)
        return await self.stub.BuildPairs(request, **self._options(timeout))


class TrainerClient(ServiceClient):
    stub_class = trainer_pb2_grpc.TrainerServiceStub

    async def train(
        self,
        pairs: Iterable[common_pb2.PreferencePair],
        *,
        round: int,
        prompts: Iterable[common_pb2.Prompt] = (),
        epochs: int = 0,
        timeout: float | None = None,
    ) -> trainer_pb2.TrainResponse:
        """`prompts`: those the pairs name by `prompt_id` (`BuildPairsResponse.prompts`), each once."""
        request = trainer_pb2.TrainRequest(pairs=pairs, prompts=prompts, round=round, epochs=epochs)
        return await self.stub.Train(request, **self._options(timeout))

    async def checkpoint(
        self, tag: str = "", *, best: bool = False, timeout: float | None = None
    ) -> trainer_pb2.CheckpointResponse:
        request = trainer_pb2.CheckpointRequest(tag=tag, best=best)
        return await self.stub.Checkpoint(request, **self._options(timeout))

    async def publish_weights(
        self, version: int, transport: trainer_pb2.WeightTransport.ValueType, *, timeout: float | None = None
    ) -> trainer_pb2.PublishWeightsResponse:
        request = trainer_pb2.PublishWeightsRequest(version=version, transport=transport)
        return await self.stub.PublishWeights(request, **self._options(timeout))

    async def status(self, *, timeout: float | None = None) -> trainer_pb2.TrainerServiceGetStatusResponse:
        return await self.stub.GetStatus(trainer_pb2.TrainerServiceGetStatusRequest(), **self._options(timeout))


class ControllerClient(ServiceClient):
    stub_class = controller_pb2_grpc.ControllerServiceStub

    async def start_run(
        self, config_yaml: str, run_id: str = "", *, timeout: float | None = None
    ) -> controller_pb2.Run:
        request = controller_pb2.StartRunRequest(config_yaml=config_yaml, run_id=run_id)
        return (await self.stub.StartRun(request, **self._options(timeout))).run

    async def pause_run(self, run_id: str, *, timeout: float | None = None) -> controller_pb2.Run:
        request = controller_pb2.PauseRunRequest(run_id=run_id)
        return (await self.stub.PauseRun(request, **self._options(timeout))).run

    async def resume_run(self, run_id: str, *, timeout: float | None = None) -> controller_pb2.Run:
        request = controller_pb2.ResumeRunRequest(run_id=run_id)
        return (await self.stub.ResumeRun(request, **self._options(timeout))).run

    async def stop_run(self, run_id: str, *, timeout: float | None = None) -> controller_pb2.Run:
        request = controller_pb2.StopRunRequest(run_id=run_id)
        return (await self.stub.StopRun(request, **self._options(timeout))).run

    async def get_run(self, run_id: str, *, timeout: float | None = None) -> controller_pb2.Run:
        return (await self.stub.GetRun(controller_pb2.GetRunRequest(run_id=run_id), **self._options(timeout))).run

    async def list_runs(self, *, timeout: float | None = None) -> list[controller_pb2.Run]:
        return list((await self.stub.ListRuns(controller_pb2.ListRunsRequest(), **self._options(timeout))).runs)

    async def list_rounds(
        self, run_id: str, *, from_round: int = 0, limit: int = 0, timeout: float | None = None
    ) -> list[common_pb2.RoundMetrics]:
        request = controller_pb2.ListRoundsRequest(run_id=run_id, from_round=from_round, limit=limit)
        return list((await self.stub.ListRounds(request, **self._options(timeout))).rounds)

    async def watch_rounds(self, run_id: str, *, from_round: int = 0) -> AsyncIterator[common_pb2.RoundMetrics]:
        """Round records as they finish; no deadline (a watch lives as long as the caller wants)."""
        request = controller_pb2.WatchRoundsRequest(run_id=run_id, from_round=from_round)
        async for message in self.stub.WatchRounds(request, metadata=self._metadata):
            yield message.round
