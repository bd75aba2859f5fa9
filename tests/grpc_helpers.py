"""A small real servicer and server fixture for testing the shared gRPC plumbing.

The servicer is a test double for the *rollout logic* only (which is not under test here); the
server, interceptors, health, reflection, TLS and clients around it are the real production code.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc

from mpo.config import RequestLimits, ServerConfig
from mpo.serving.server import ServiceServer, bind
from mpo.v1 import common_pb2, rollout_pb2, rollout_pb2_grpc


class ScriptedRollout(rollout_pb2_grpc.RolloutServiceServicer):
    """Behaviour is chosen by the question text: 'slow', 'boom', 'flaky' or anything else (echo)."""

    def __init__(self, flaky_failures: int = 2) -> None:
        self.calls: Counter[str] = Counter()
        self.flaky_failures = flaky_failures
        self.weights_bytes = 0

    async def Generate(self, request, context):
        self.calls["Generate"] += 1
        question = request.prompts[0].question
        if question == "slow":
            await asyncio.sleep(1.0)
        elif question == "boom":
            raise RuntimeError("engine exploded")
        elif question == "flaky" and self.calls["Generate"] <= self.flaky_failures:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "engine restarting")
        samples = [
            common_pb2.Sample(prompt_id=p.id, index=i, text=p.question, policy_version=7)
            for p in request.prompts
            for i in range(request.sampling.n)
        ]
        return rollout_pb2.GenerateResponse(samples=samples)

    async def GenerateStream(self, request, context):
        self.calls["GenerateStream"] += 1
        for word in request.prompts[0].question.split():
            yield rollout_pb2.GenerateStreamResponse(prompt_id=request.prompts[0].id, text_delta=word, policy_version=7)

    async def LoadWeights(self, request_iterator, context):
        self.calls["LoadWeights"] += 1
        received = 0
        async for message in request_iterator:
            if message.HasField("chunk"):
                received += len(message.chunk.payload)
        self.weights_bytes = received
        return rollout_pb2.LoadWeightsResponse(policy_version=1, replicas_loaded=1, bytes_received=received)

    async def GetStatus(self, request, context):
        self.calls["GetStatus"] += 1
        return rollout_pb2.GetStatusResponse(policy_version=7, ready=True)


def prompt(question: str = "What is 2 + 3?", *, prompt_id: str = "p0", task: str = "arith") -> common_pb2.Prompt:
    return common_pb2.Prompt(id=prompt_id, question=question, task=task, answer="5")


def sampling(**overrides) -> common_pb2.SamplingParams:
    params = {"n": 2, "temperature": 1.0, "max_tokens": 16, **overrides}
    return common_pb2.SamplingParams(**params)


def generate_request(question: str = "What is 2 + 3?", **sampling_overrides) -> rollout_pb2.GenerateRequest:
    return rollout_pb2.GenerateRequest(prompts=[prompt(question)], sampling=sampling(**sampling_overrides))


async def start_server(servicer: ScriptedRollout, **config) -> ServiceServer:
    config.setdefault("limits", RequestLimits(max_tokens=64, max_batch_prompts=4))
    server = ServiceServer(ServerConfig(**config), [bind(servicer)], name="rollout-test")
    await server.start()
    return server
