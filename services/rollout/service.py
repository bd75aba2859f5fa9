"""`RolloutService` over gRPC: the one endpoint outside clients and the controller talk to.

Requests arrive validated by the shared guard; here they are rendered for the model, spread over the
replica pool, and answered with samples tagged by the policy version that produced them. Weight
updates (streamed or from storage) are verified in full, committed to the ledger, and only then
broadcast to every replica.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from mpo.config import RolloutConfig
from mpo.services.common.validation import InvalidRequest
from mpo.services.rollout.engines.base import Completion, SamplingSpec
from mpo.services.rollout.pool import ReplicaPool, ReplicaUnavailable
from mpo.services.rollout.prompts import PromptRenderer, resolve_readable
from mpo.services.rollout.weights import WeightLedger, WeightSignature, model_signature, shard_files, verify_files
from mpo.v1 import common_pb2, rollout_pb2, rollout_pb2_grpc

log = logging.getLogger(__name__)

_FINISH = {
    "stop": common_pb2.FINISH_REASON_STOP,
    "length": common_pb2.FINISH_REASON_LENGTH,
    "aborted": common_pb2.FINISH_REASON_ABORTED,
    None: common_pb2.FINISH_REASON_UNSPECIFIED,
}


def sampling_spec(params: common_pb2.SamplingParams) -> SamplingSpec:
    """Proto defaults mean "off": top_p 0 → 1.0, top_k 0 → no limit."""
    return SamplingSpec(
        n=params.n,
        temperature=params.temperature,
        top_p=params.top_p if params.top_p > 0 else 1.0,
        top_k=params.top_k,
        max_tokens=params.max_tokens,
        seed=params.seed if params.HasField("seed") else None,
        stop=tuple(params.stop),
        logprobs=params.return_logprobs,
    )


def to_sample(prompt_id: str, index: int, completion: Completion, version: int) -> common_pb2.Sample:
    return common_pb2.Sample(
        prompt_id=prompt_id,
        index=index,
        text=completion.text,
        token_ids=completion.token_ids,
        logprobs=completion.logprobs,
        finish_reason=_FINISH[completion.finish_reason],
        policy_version=version,
    )


class RolloutService(rollout_pb2_grpc.RolloutServiceServicer):
    def __init__(self, config: RolloutConfig, pool: ReplicaPool, *, max_model_len: int, backend: str) -> None:
        self.config, self.pool = config, pool
        self.backend = backend
        self.renderer = PromptRenderer(
            config.model,
            max_model_len=max_model_len,
            readable_roots=config.readable_roots,
            prompt=config.prompt,
            trust_remote_code=config.trust_remote_code,
        )
        self.signature: WeightSignature = model_signature(config.model, trust_remote_code=config.trust_remote_code)
        self.ledger = WeightLedger(config.weights_dir)
        self.version = committed.version if (committed := self.ledger.current()) else 0
        self.max_model_len = max_model_len

    async def _unavailable(self, context: grpc.aio.ServicerContext, error: ReplicaUnavailable) -> None:
        await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))

    # --- sampling ------------------------------------------------------------------------------------

    async def Generate(
        self, request: rollout_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> rollout_pb2.GenerateResponse:
        spec = sampling_spec(request.sampling)
        inputs = [
            self.renderer.render(p, f"prompts[{i}]", max_tokens=spec.max_tokens) for i, p in enumerate(request.prompts)
        ]
        try:
            version, completions = await self.pool.generate(inputs, spec)
        except ReplicaUnavailable as error:
            await self._unavailable(context, error)
        samples = [
            to_sample(prompt.id, j, completion, version)
            for prompt, row in zip(request.prompts, completions, strict=True)
            for j, completion in enumerate(row)
        ]
        return rollout_pb2.GenerateResponse(samples=samples)

    async def GenerateStream(
        self, request: rollout_pb2.GenerateStreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[rollout_pb2.GenerateStreamResponse]:
        spec = sampling_spec(request.sampling)
        inputs = [
            self.renderer.render(p, f"prompts[{i}]", max_tokens=spec.max_tokens) for i, p in enumerate(request.prompts)
        ]
        try:
            async for version, delta in self.pool.stream(inputs, spec):
                yield rollout_pb2.GenerateStreamResponse(
                    prompt_id=request.prompts[delta.input_index].id,
                    index=delta.sample_index,
                    text_delta=delta.text,
                    token_ids=delta.token_ids,
                    logprobs=delta.logprobs,
                    finish_reason=_FINISH[delta.finish_reason],
                    policy_version=version,
                )
        except ReplicaUnavailable as error:
            await self._unavailable(context, error)

    async def Continue(
        self, request: rollout_pb2.ContinueRequest, context: grpc.aio.ServicerContext
    ) -> rollout_pb2.ContinueResponse:
        spec = sampling_spec(request.sampling)
        inputs = [
            self.renderer.render(
                c.prompt,
                f"continuations[{i}].prompt",
                max_tokens=spec.max_tokens,
                prefix=c.prefix,
                with_images=not c.drop_images,
            )
            for i, c in enumerate(request.continuations)
        ]
        try:
            version, completions = await self.pool.generate(inputs, spec)
        except ReplicaUnavailable as error:
            await self._unavailable(context, error)
        samples = [
            to_sample(c.prompt.id, 0, row[0], version)
            for c, row in zip(request.continuations, completions, strict=True)
        ]
        return rollout_pb2.ContinueResponse(samples=samples)

    # --- weights -------------------------------------------------------------------------------------

    def _check_newer(self, version: int) -> None:
        if version <= self.version:
            raise InvalidRequest(
                "manifest.version",
                f"must be greater than the serving version {self.version}, got {version}",
                grpc.StatusCode.FAILED_PRECONDITION,
            )

    async def _install(self, manifest: rollout_pb2.WeightManifest, files: list[Path]) -> tuple[int, float]:
        """Verify, commit, broadcast; returns (replicas loaded, seconds). Callers hold the load lock."""
        started = time.perf_counter()
        await asyncio.to_thread(verify_files, files, manifest, self.signature)
        committed = await asyncio.to_thread(self.ledger.commit, manifest.version, files, manifest)
        loaded = await self.pool.load(committed.version, committed.files, manifest.tensor_count)
        self.version = committed.version
        seconds = time.perf_counter() - started
        log.info("policy version %d loaded on %d replicas in %.2fs", self.version, loaded, seconds)
        return loaded, seconds

    async def LoadWeights(
        self, request_iterator: AsyncIterator[rollout_pb2.LoadWeightsRequest], context: grpc.aio.ServicerContext
    ) -> rollout_pb2.LoadWeightsResponse:
        manifest: rollout_pb2.WeightManifest | None = None
        files: list[Path] = []
        received = 0
        async with self.pool.load_lock:
            staging: Path | None = None
            async for message in request_iterator:  # the guard has checked order, indexes and sizes
                if message.HasField("manifest"):
                    manifest = message.manifest
                    self._check_newer(manifest.version)
                    staging = self.ledger.staging_dir(manifest.version)
                    continue
                assert staging is not None
                path = staging / f"weights-{message.chunk.index:05d}.safetensors"
                await asyncio.to_thread(path.write_bytes, message.chunk.payload)
                files.append(path)
                received += len(message.chunk.payload)
            assert manifest is not None
            try:
                loaded, seconds = await self._install(manifest, files)
            except ReplicaUnavailable as error:
                await self._unavailable(context, error)
        return rollout_pb2.LoadWeightsResponse(
            policy_version=self.version, replicas_loaded=loaded, bytes_received=received, load_seconds=seconds
        )

    async def LoadWeightsFromStorage(
        self, request: rollout_pb2.LoadWeightsFromStorageRequest, context: grpc.aio.ServicerContext
    ) -> rollout_pb2.LoadWeightsFromStorageResponse:
        source = resolve_readable(request.uri, self.config.readable_roots, "uri")
        files = shard_files(source) if source.is_dir() else [source]
        if not files:
            raise InvalidRequest("uri", f"{request.uri!r} holds no *.safetensors shard files")
        async with self.pool.load_lock:
            self._check_newer(request.manifest.version)
            try:
                loaded, seconds = await self._install(request.manifest, files)
            except ReplicaUnavailable as error:
                await self._unavailable(context, error)
        return rollout_pb2.LoadWeightsFromStorageResponse(
            policy_version=self.version,
            replicas_loaded=loaded,
            bytes_read=sum(f.stat().st_size for f in files),
            load_seconds=seconds,
        )

    # --- status --------------------------------------------------------------------------------------

    async def GetStatus(
        self, request: rollout_pb2.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> rollout_pb2.GetStatusResponse:
        limits = self.config.server.limits
        return rollout_pb2.GetStatusResponse(
            policy_version=self.version,
            queue_depth=self.pool.queue_depth,
            ready=True,
            engine=rollout_pb2.EngineInfo(
                backend=self.backend,
                model=str(self.config.model),
                replicas=self.config.replicas,
                tensor_parallel_size=self.config.tensor_parallel_size,
                device="cuda" if self.config.num_gpus_per_replica > 0 else "cpu",
                max_tokens_limit=min(limits.max_tokens, self.max_model_len),
                max_batch_prompts=limits.max_batch_prompts,
            ),
        )
