"""Batched generation with transformers for the tiny text and image-text models.

vLLM is the production engine; this path serves image-text models on CPU (where vLLM cannot load
them, docs/design.md §5), the bootstrap's evaluations, and any model directory transformers can load.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mpo.chat import ChatRenderer, open_images
from mpo.config import PromptConfig
from mpo.data.records import PromptRecord
from mpo.models.loading import load_model


@dataclass(frozen=True)
class Sampling:
    n: int = 1
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 50
    max_new_tokens: int = 96
    seed: int | None = None


@dataclass(frozen=True)
class Generated:
    """One response: its text, its token ids (through the end token, if any) and whether it was cut at
    `Sampling.max_new_tokens`."""

    text: str
    token_ids: tuple[int, ...]
    truncated: bool


class TransformersGenerator:
    """Loads a model directory once and answers batches of prompt records."""

    def __init__(
        self,
        model_dir: Path | str,
        *,
        model: torch.nn.Module | None = None,
        batch_size: int = 64,
        prompt: PromptConfig | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.renderer = ChatRenderer(self.model_dir, prompt=prompt, trust_remote_code=trust_remote_code)
        self.image_text = self.renderer.image_text
        self.processor, self.tokenizer = self.renderer.processor, self.renderer.tokenizer
        self.stop_token_ids = self.renderer.stop_token_ids()
        self.model = model if model is not None else load_model(self.model_dir, trust_remote_code=trust_remote_code)
        self.batch_size = batch_size

    def prompt_text(self, record: PromptRecord) -> str:
        return self.renderer.prompt_text(record.question, len(record.images))

    def encode(self, records: Sequence[PromptRecord], *, padding_side: str = "left") -> dict[str, torch.Tensor]:
        """Left-padded by default: generation continues at the right edge of every row."""
        self.tokenizer.padding_side = padding_side
        images = open_images([path for record in records for path in record.images])
        return self.renderer.encode([self.prompt_text(r) for r in records], images, padding=True)

    def generate(self, records: Sequence[PromptRecord], sampling: Sampling = Sampling()) -> list[list[str]]:
        """`sampling.n` decoded responses per record, in record order."""
        return [[output.text for output in outputs] for outputs in self.generate_outputs(records, sampling)]

    @torch.no_grad()
    def generate_outputs(
        self, records: Sequence[PromptRecord], sampling: Sampling = Sampling()
    ) -> list[list[Generated]]:
        """As `generate`, with each response's token ids and whether it ran into `max_new_tokens`: what
        judging degenerate answers needs (a loop is counted in tokens, a cut answer has no end token)."""
        was_training = self.model.training
        self.model.eval()
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        responses: list[list[Generated]] = []
        for start in range(0, len(records), self.batch_size):
            batch = records[start : start + self.batch_size]
            inputs = self.encode(batch)
            greedy = sampling.temperature <= 0
            output = self.model.generate(
                **inputs,
                max_new_tokens=sampling.max_new_tokens,
                do_sample=not greedy,
                temperature=None if greedy else sampling.temperature,
                top_k=None if greedy else sampling.top_k,
                num_return_sequences=sampling.n,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.stop_token_ids,
            )
            rows = [self._generated(row) for row in output[:, inputs["input_ids"].shape[1] :].tolist()]
            responses.extend(rows[i * sampling.n : (i + 1) * sampling.n] for i in range(len(batch)))
        self.model.train(was_training)
        return responses

    def _generated(self, tokens: list[int]) -> Generated:
        """One generated row: up to and including its first end token, or whole (cut at the limit; a
        finished row is padded after its end token, so a row without one ran out of tokens)."""
        stops = set(self.stop_token_ids)
        end = next((k for k, token in enumerate(tokens) if token in stops), None)
        ids = tokens if end is None else tokens[: end + 1]
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return Generated(text=text, token_ids=tuple(ids), truncated=end is None)
