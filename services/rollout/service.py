"""`RolloutService` over gRPC: the one endpoint outside clients and the controller talk to.

Requests arrive validated by the shared guard; here they are rendered for the model, spread over the
replica pool, and answered with samples tagged by the policy version that produced them. Weight
updates (streamed or from storage) are bounded before any work (the model's size cap, exactly the next
version, a stream that stalls is cut off), verified in full, committed to the ledger, reported as the
serving version, and only then broadcast to every replica; a replica that fails to load it restarts
into it from the ledger (replica.py), so status, ledger and replicas agree however a load ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TypeVar

import grpc
from ray.exceptions import RayError

from mpo.config import GREEDY_TEMPERATURE, RolloutConfig
from mpo.prompts import PromptRenderer, resolve_readable
from mpo.services.rollout.engines.base import Completion, EngineInput, SamplingSpec, cut_at_stop
from mpo.services.rollout.pool import ReplicaPool, ReplicaUnavailable
from mpo.serving.validation import InvalidRequest, error_text
from mpo.v1 import common_pb2, rollout_pb2, rollout_pb2_grpc
from mpo.weights import (
    Digest,
    ShardWriter,
    WeightLedger,
    WeightSignature,
    check_next_version,
    check_update_size,
    max_update_bytes,
    model_signature,
    shard_files,
    verify_files,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

_FINISH = {
    "stop": common_pb2.FINISH_REASON_STOP,
    "length": common_pb2.FINISH_REASON_LENGTH,
    "aborted": common_pb2.FINISH_REASON_ABORTED,
    None: common_pb2.FINISH_REASON_UNSPECIFIED,
}


def sampling_spec(params: common_pb2.SamplingParams) -> SamplingSpec:
    """Proto defaults mean "off": top_p 0 → 1.0, top_k 0 → no limit; max_tokens 0 (unset) is resolved
    per request by the service. A temperature below GREEDY_TEMPERATURE is greedy in both engines."""
    return SamplingSpec(
        n=params.n,
        temperature=params.temperature if params.temperature >= GREEDY_TEMPERATURE else 0.0,
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


def held_to(
    completion: Completion, budget: int, decode: Callable[[list[int]], str], stop: Sequence[str], floor: int = 0
) -> Completion:
    """`completion` cut to its first `budget` tokens (`Continuation.max_total_tokens`), its text decoded
    again from them; unchanged when it is no longer. A stop string within its first `floor` tokens (the
    engine's `min_tokens`) does not end it."""
    if len(completion.token_ids) <= budget:
        return completion
    token_ids = completion.token_ids[:budget]
    text, stopped = cut_at_stop(token_ids, decode, stop, floor)
    return Completion(text, token_ids, completion.logprobs[:budget], "stop" if stopped else "length")


async def _idle_limited(messages: AsyncIterator[T], seconds: float) -> AsyncIterator[T]:
    """`messages`, cut off with DEADLINE_EXCEEDED once the client sends nothing for `seconds`: a stalled
    upload would otherwise hold the load lock, and its staged files, for as long as it stays connected."""
    while True:
        try:
            async with asyncio.timeout(seconds):
                message = await anext(messages)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise InvalidRequest(
                "stream",
                f"the LoadWeights stream sent nothing for {seconds:g} s (weight_stream_idle_seconds); "
                "the update is abandoned",
                grpc.StatusCode.DEADLINE_EXCEEDED,
            ) from None
        yield message


async def _receive(messages: AsyncIterator[rollout_pb2.LoadWeightsRequest], staging: Path) -> ShardWriter:
    """Write the chunks after the manifest into `staging`, hashing them, as they come (the guard has
    checked their order, indexes and sizes: at most `manifest.total_bytes` in all).

    Chunk i is written while chunk i + 1 arrives, so the disk and the network overlap; one write at a
    time, so the hash runs over the chunks in order and at most two chunks are held in memory."""
    writer = ShardWriter(staging)
    writing: asyncio.Future[Path] | None = None
    try:
        async for message in messages:
            payload = message.chunk.payload  # read once: each read copies the bytes out of the message
            if writing is not None:
                await _to_the_end(writing)
            writing = asyncio.ensure_future(asyncio.to_thread(writer.write, payload))
        if writing is not None:
            await _to_the_end(writing)
    except BaseException:
        # The stream failed or the client left: the write under way lands before staging is removed.
        if writing is not None and not writing.done():
            with suppress(Exception):  # the stream's own error is the one to report
                await _to_the_end(writing)
        raise
    return writer


async def _to_the_end(work: Awaitable[T]) -> T:
    """`work`, run to its end even when the caller is cancelled (the client left or its deadline passed);
    the cancellation is raised once `work` is done, still under the load lock. So a chunk being written
    lands before its staging folder is removed, and a verified update is committed and broadcast whole:
    status, ledger and replicas never disagree because a client went away."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait([task])
        if not task.cancelled() and (error := task.exception()) is not None:
            log.warning("work finished after its client left failed: %r", error)
        raise


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
            limits=config.server.limits,
        )
        self.signature: WeightSignature = model_signature(config.model, trust_remote_code=config.trust_remote_code)
        self.max_update_bytes = max_update_bytes(self.signature)
        self.ledger = WeightLedger(config.weights_dir)
        self.version = committed.version if (committed := self.ledger.current()) else 0
        self.max_model_len = max_model_len

    async def _unavailable(self, context: grpc.aio.ServicerContext, error: ReplicaUnavailable) -> None:
        await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))

    # --- sampling ------------------------------------------------------------------------------------

    async def _engine_inputs(
        self, renders: list[partial[EngineInput]], spec: SamplingSpec
    ) -> tuple[list[EngineInput], SamplingSpec]:
        """Render the batch in a worker thread (it decodes every image: seconds of CPU for a big batch,
        which must not stall the event loop), then resolve an unset `max_tokens`: what the context leaves
        after the request's longest prompt, at most the service's `max_tokens` (each render has checked
        that its prompt leaves room for one token at least)."""
        inputs = await asyncio.to_thread(lambda: [render() for render in renders])
        if spec.max_tokens:
            return inputs, spec
        longest = max(len(item.prompt_token_ids) for item in inputs)
        room = min(self.config.server.limits.max_tokens, self.max_model_len - longest)
        return inputs, replace(spec, max_tokens=room)

    def _prompt_renders(self, prompts: Sequence[common_pb2.Prompt], spec: SamplingSpec) -> list[partial[EngineInput]]:
        return [
            partial(self.renderer.render, prompt, f"prompts[{i}]", max_tokens=spec.max_tokens)
            for i, prompt in enumerate(prompts)
        ]

    @asynccontextmanager
    async def _sampling(self, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        """The one place where a failure in a replica becomes a status. A request the engine refuses
        (its ValueError or TypeError, arriving through Ray as a RayTaskError that is also an instance of
        it) is INVALID_ARGUMENT; a replica gone, or any other engine failure, is UNAVAILABLE: retryable."""
        try:
            yield
        except ReplicaUnavailable as error:
            await self._unavailable(context, error)
        except RayError as error:
            cause = getattr(error, "cause", None) or error
            if isinstance(cause, (ValueError, TypeError)):
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"the engine refused the request: {error_text(cause)}"
                )
            else:
                log.warning("sampling failed in a replica: %s", error)
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"the engine failed ({error_text(cause)}); retry")

    async def Generate(
        self, request: rollout_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> rollout_pb2.GenerateResponse:
        spec = sampling_spec(request.sampling)
        inputs, spec = await self._engine_inputs(self._prompt_renders(request.prompts, spec), spec)
        async with self._sampling(context):
            version, completions = await self.pool.generate(inputs, spec)
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
        inputs, spec = await self._engine_inputs(self._prompt_renders(request.prompts, spec), spec)
        async with self._sampling(context):
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

    async def Continue(
        self, request: rollout_pb2.ContinueRequest, context: grpc.aio.ServicerContext
    ) -> rollout_pb2.ContinueResponse:
        spec = sampling_spec(request.sampling)
        renders = [
            partial(
                self.renderer.render,
                c.prompt,
                f"continuations[{i}].prompt",
                max_tokens=spec.max_tokens,
                prefix=c.prefix,
                with_images=not c.drop_images,
            )
            for i, c in enumerate(request.continuations)
        ]
        inputs, spec = await self._engine_inputs(renders, spec)
        bounds = await asyncio.to_thread(  # tokenizes the prefixes: a big batch must not stall the event loop
            lambda: [self._continuation_bounds(c, spec.max_tokens) for c in request.continuations]
        )
        inputs = [replace(item, min_tokens=floor) for item, (floor, _) in zip(inputs, bounds, strict=True)]
        async with self._sampling(context):
            version, completions = await self.pool.generate(
                inputs, replace(spec, max_tokens=max(budget for _, budget in bounds))
            )
        decode = partial(self.renderer.tokenizer.decode, skip_special_tokens=True)
        samples = [
            to_sample(c.prompt.id, 0, held_to(row[0], budget, decode, spec.stop, floor), version)
            for c, row, (floor, budget) in zip(request.continuations, completions, bounds, strict=True)
        ]
        return rollout_pb2.ContinueResponse(samples=samples)

    def _continuation_bounds(self, continuation: rollout_pb2.Continuation, max_tokens: int) -> tuple[int, int]:
        """New tokens `continuation` must have before it may end, and may have: what `min_total_tokens` and
        `max_total_tokens` leave after its prefix (at least one for the most), both at most `max_tokens`."""
        if not (continuation.max_total_tokens or continuation.min_total_tokens):
            return 0, max_tokens
        prefix_tokens = len(self.renderer.tokenizer(continuation.prefix, add_special_tokens=False).input_ids)
        budget = max_tokens
        if continuation.max_total_tokens:
            budget = min(max_tokens, max(1, continuation.max_total_tokens - prefix_tokens))
        return min(budget, max(0, continuation.min_total_tokens - prefix_tokens)), budget

    # --- weights -------------------------------------------------------------------------------------

    async def _install(
        self, manifest: rollout_pb2.WeightManifest, files: list[Path], digest: Digest | None = None
    ) -> tuple[int, float]:
        """Verify, commit, broadcast; returns (replicas loaded, seconds). Callers hold the load lock and
        run it `_to_the_end`. `digest`: the files' hash taken while they were received (else they are
        read and hashed here).

        Committed, the version is the serving one at once: a replica whose reload fails restarts into
        the ledger's version, so by the time `pool.load` returns every replica serves it."""
        started = time.perf_counter()
        await asyncio.to_thread(verify_files, files, manifest, self.signature, digest=digest)
        committed = await asyncio.to_thread(self.ledger.commit, manifest.version, files, manifest)
        self.version = committed.version
        loaded = await self.pool.load(committed.version, committed.files, manifest.tensor_count)
        seconds = time.perf_counter() - started
        log.info("policy version %d loaded on %d replicas in %.2fs", self.version, loaded, seconds)
        return loaded, seconds

    async def LoadWeights(
        self, request_iterator: AsyncIterator[rollout_pb2.LoadWeightsRequest], context: grpc.aio.ServicerContext
    ) -> rollout_pb2.LoadWeightsResponse:
        messages = _idle_limited(request_iterator, self.config.weight_stream_idle_seconds)
        manifest = (await anext(messages)).manifest  # the guard refuses a stream that does not open with one
        check_update_size(manifest.total_bytes, self.max_update_bytes, "manifest.total_bytes")
        async with self.pool.load_lock:
            check_next_version(manifest.version, self.version)
            with self.ledger.staging(manifest.version) as staging:
                received = await _receive(messages, staging)
                try:
                    loaded, seconds = await _to_the_end(self._install(manifest, received.files, received.digest))
                except ReplicaUnavailable as error:
                    await self._unavailable(context, error)
        return rollout_pb2.LoadWeightsResponse(
            policy_version=self.version,
            replicas_loaded=loaded,
            bytes_received=manifest.total_bytes,  # verified: exactly what arrived
            load_seconds=seconds,
        )

    def _storage_files(self, uri: str) -> list[Path]:
        """The shard files `uri` names (itself, or a folder's *.safetensors), each a regular file under the
        readable roots: a shard linked to a device or a FIFO would defeat the size cap (st_size 0)."""
        roots = self.config.readable_roots
        source = resolve_readable(uri, roots, "uri")
        files = shard_files(source) if source.is_dir() else [source]
        if not files:
            raise InvalidRequest("uri", f"{uri!r} holds no *.safetensors shard files")
        return [resolve_readable(str(f), roots, "uri", directories=False) for f in files]

    async def LoadWeightsFromStorage(
        self, request: rollout_pb2.LoadWeightsFromStorageRequest, context: grpc.aio.ServicerContext
    ) -> rollout_pb2.LoadWeightsFromStorageResponse:
        check_update_size(request.manifest.total_bytes, self.max_update_bytes, "manifest.total_bytes")
        files = self._storage_files(request.uri)
        size = sum(f.stat().st_size for f in files)
        check_update_size(size, self.max_update_bytes, "uri")  # before a byte is hashed
        async with self.pool.load_lock:
            check_next_version(request.manifest.version, self.version)
            try:
                loaded, seconds = await _to_the_end(self._install(request.manifest, files))
            except ReplicaUnavailable as error:
                await self._unavailable(context, error)
        return rollout_pb2.LoadWeightsFromStorageResponse(
            policy_version=self.version, replicas_loaded=loaded, bytes_read=size, load_seconds=seconds
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
