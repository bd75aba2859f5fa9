"""What every rollout engine offers, so the replica and the service never care which one is live.

Both backends take the same `EngineInput` (a rendered chat prompt plus its images) and `SamplingSpec`
and return the same `Completion`s; the semantics of each sampling knob are defined here once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from mpo.prompts import EngineInput

FinishReason = Literal["stop", "length", "aborted"]


@dataclass(frozen=True)
class SamplingSpec:
    """n samples per input; temperature 0 = greedy; top_p 1.0 / top_k 0 = off; stop strings are cut
    from the text (like vLLM); logprobs are of the sampled tokens under the unmodified model."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 256
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: bool = False


@dataclass
class Completion:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish_reason: FinishReason | None = None


@dataclass(frozen=True)
class Delta:
    """A piece of one sample while it streams; `finish_reason` is set on its last piece."""

    input_index: int
    sample_index: int
    text: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: FinishReason | None


@dataclass(frozen=True)
class EngineDescription:
    backend: str
    model: str
    device: str
    max_model_len: int
    image_text: bool
    tensor_parallel_size: int = 1


class Engine(Protocol):
    description: EngineDescription

    async def generate(self, inputs: list[EngineInput], spec: SamplingSpec) -> list[list[Completion]]:
        """`spec.n` completions per input, in input order. A request the engine refuses raises ValueError
        or TypeError (the service answers INVALID_ARGUMENT); any other error is the engine's (UNAVAILABLE)."""
        ...

    def stream(self, inputs: list[EngineInput], spec: SamplingSpec) -> AsyncIterator[Delta]: ...

    async def load_weights(self, files: list[Path]) -> int:
        """Replace the weights in place from verified safetensors shards; returns the tensors loaded."""
        ...

    async def shutdown(self) -> None: ...


def cut_at_stop(
    token_ids: list[int], decode: Callable[[list[int]], str], stop: Iterable[str], floor: int = 0
) -> tuple[str, bool]:
    """The decoded text up to its earliest stop string (excluded), and whether one was found; a stop string
    that ends within the text of the first `floor` tokens (an `EngineInput.min_tokens` floor) does not count."""
    text = decode(token_ids)
    held = len(decode(token_ids[:floor])) if floor else 0
    positions = [position for s in stop if (position := text.find(s, max(0, held - len(s) + 1))) >= 0]
    return (text[: min(positions)], True) if positions else (text, False)
