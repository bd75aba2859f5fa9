"""The fallback backend: batched transformers `generate`, for image-text models on CPU (docs/design.md §5).

One batch runs at a time (a lock serialises calls and weight loads); sampling follows `SamplingSpec`
exactly as the vLLM backend does, including stop strings cut from the text and raw-model logprobs.
It does not stream token by token: `stream` yields each sample whole, once it is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Literal

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    StopStringCriteria,
)

from mpo.chat import ChatRenderer, open_images
from mpo.models.loading import load_model
from mpo.services.rollout.engines.base import (
    Completion,
    Delta,
    EngineDescription,
    EngineInput,
    SamplingSpec,
    cut_at_stop,
)
from mpo.weights import iter_tensors


class _HoldEnds(LogitsProcessor):
    """No end-of-turn token for a row below its floor (`EngineInput.min_tokens`), as vLLM's `min_tokens`."""

    def __init__(self, floors: torch.Tensor, prompt_width: int, stop_token_ids: list[int]) -> None:
        self.floors, self.prompt_width = floors, prompt_width
        self.stop_ids = torch.tensor(stop_token_ids, device=floors.device)

    def held(self, input_ids: torch.Tensor) -> torch.Tensor:
        return (input_ids.shape[1] - self.prompt_width) < self.floors

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        ends = torch.zeros(scores.shape[1], dtype=torch.bool, device=scores.device)
        ends[self.stop_ids] = True
        return scores.masked_fill(self.held(input_ids)[:, None] & ends[None, :], float("-inf"))


class _HoldStopStrings(StoppingCriteria):
    """A stop string ends only the rows past their floor."""

    def __init__(self, stop_strings: StopStringCriteria, hold: _HoldEnds) -> None:
        self.stop_strings, self.hold = stop_strings, hold

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: object) -> torch.Tensor:
        return self.stop_strings(input_ids, scores) & ~self.hold.held(input_ids)


class TransformersEngine:
    def __init__(
        self,
        renderer: ChatRenderer,
        *,
        max_model_len: int,
        device: str,
        trust_remote_code: bool,
        kv_cache: Literal["dynamic", "static"] = "dynamic",
    ) -> None:
        """`kv_cache`: static allocates each batch's cache at full length once; dynamic grows it (and copies
        it) at every new token, which is most of a small model's decoding time on CPU."""
        model_dir = renderer.model_dir
        self.renderer = renderer
        self.tokenizer = renderer.tokenizer
        self.tokenizer.padding_side = "left"  # generation continues at the right edge of every row
        self.stop_token_ids = renderer.stop_token_ids()
        self.model = load_model(model_dir, trust_remote_code=trust_remote_code)
        self.model.to(device).eval()
        self.device = device
        self.cache_implementation = "static" if kv_cache == "static" else None
        self._lock = asyncio.Lock()
        self.description = EngineDescription(
            backend="transformers",
            model=str(model_dir),
            device=device,
            max_model_len=max_model_len,
            image_text=renderer.image_text,
        )

    def _encode(self, inputs: list[EngineInput]) -> dict[str, torch.Tensor]:
        images = open_images([data for item in inputs for data in item.images])
        encoded = self.renderer.encode([item.prompt for item in inputs], images, padding=True)
        return {key: value.to(self.device) for key, value in encoded.items()}

    @torch.no_grad()
    def _generate_sync(self, inputs: list[EngineInput], spec: SamplingSpec) -> list[list[Completion]]:
        greedy = spec.temperature == 0
        draws = 1 if greedy else spec.n  # greedy samples are identical; decode once, copy n times
        if spec.seed is not None:
            torch.manual_seed(spec.seed)
        encoded = self._encode(inputs)
        prompt_width = encoded["input_ids"].shape[1]
        floors = torch.tensor([item.min_tokens for item in inputs], device=self.device).repeat_interleave(draws)
        ending: dict[str, object] = {"stop_strings": list(spec.stop) or None}
        if floors.any():
            hold = _HoldEnds(floors, prompt_width, self.stop_token_ids)
            ending = {"logits_processor": LogitsProcessorList([hold])}
            if spec.stop:
                stop_strings = StopStringCriteria(self.tokenizer, list(spec.stop))
                ending["stopping_criteria"] = StoppingCriteriaList([_HoldStopStrings(stop_strings, hold)])
        output = self.model.generate(
            **encoded,
            **ending,
            do_sample=not greedy,
            temperature=None if greedy else spec.temperature,
            top_p=None if greedy or spec.top_p >= 1 else spec.top_p,
            top_k=None if greedy or spec.top_k <= 0 else spec.top_k,
            max_new_tokens=spec.max_tokens,
            num_return_sequences=draws,
            tokenizer=self.tokenizer,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.stop_token_ids,
            return_dict_in_generate=True,
            output_logits=spec.logprobs,
            cache_implementation=self.cache_implementation,
        )
        new_tokens = output.sequences[:, prompt_width:]
        step_logprobs = torch.log_softmax(torch.stack(output.logits, dim=1).float(), dim=-1) if spec.logprobs else None
        results: list[list[Completion]] = []
        for i, item in enumerate(inputs):
            row_completions = []
            for j in range(draws):
                row = i * draws + j
                row_completions.append(self._completion(new_tokens[row], step_logprobs, row, spec, item.min_tokens))
            results.append([replace(row_completions[0]) for _ in range(spec.n)] if greedy else row_completions)
        return results

    def _completion(
        self, tokens: torch.Tensor, step_logprobs: torch.Tensor | None, row: int, spec: SamplingSpec, floor: int
    ) -> Completion:
        decode = partial(self.tokenizer.decode, skip_special_tokens=True)
        ids = tokens.tolist()
        finish = "length"
        ends = [k for k, token in enumerate(ids) if token in self.stop_token_ids]
        if ends:
            ids = ids[: ends[0] + 1]  # keep the end-of-turn token, as vLLM does
            finish = "stop"
        else:  # a stop string ends generation early and the rest of the row is padding
            pad = self.tokenizer.pad_token_id
            while ids and ids[-1] == pad:
                ids.pop()
        text, stopped = cut_at_stop(ids, decode, spec.stop, floor)
        if stopped:
            finish = "stop"
        logprobs = (
            [step_logprobs[row, k, token].item() for k, token in enumerate(ids)] if step_logprobs is not None else []
        )
        return Completion(text=text, token_ids=ids, logprobs=logprobs, finish_reason=finish)  # type: ignore[arg-type]

    async def generate(self, inputs: list[EngineInput], spec: SamplingSpec) -> list[list[Completion]]:
        async with self._lock:
            return await asyncio.to_thread(self._generate_sync, inputs, spec)

    async def stream(self, inputs: list[EngineInput], spec: SamplingSpec) -> AsyncIterator[Delta]:
        for i, completions in enumerate(await self.generate(inputs, spec)):
            for j, c in enumerate(completions):
                yield Delta(i, j, c.text, c.token_ids, c.logprobs, c.finish_reason)

    @torch.no_grad()
    def _load_sync(self, files: list[Path]) -> int:
        """Copy each tensor into its parameter as it is read: one tensor in memory at a time. A failure
        half-way leaves mixed weights, which the replica never serves (it exits; see replica.py)."""
        params = self.model.state_dict()  # views of the parameters: copy_ writes into the model
        loaded = 0
        for name, tensor in iter_tensors(files):
            params[name].copy_(tensor)
            loaded += 1
        return loaded

    async def load_weights(self, files: list[Path]) -> int:
        async with self._lock:  # never under a running batch
            return await asyncio.to_thread(self._load_sync, files)

    async def shutdown(self) -> None:
        return None
