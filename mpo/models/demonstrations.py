"""Tokenised (prompt, demonstration) batches with response-only labels: the SFT warm start trains on
them and the reward service's log-prob scorer reads per-example log-probs off them."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mpo.chat import open_images
from mpo.data.records import PromptRecord
from mpo.models.generate import TransformersGenerator
from mpo.models.logprobs import collate, stack_image_inputs
from mpo.models.packing import pack_shared_prefix


class DemonstrationBatcher:
    """Tokenises prompt + demonstration + end-of-turn, labelling only the response tokens.

    `cache_prompts` keys encoded prompts by record id: right for a fixed data set (the bootstrap), wrong
    for clients' requests, whose ids may name other questions next time.
    """

    def __init__(self, generator: TransformersGenerator, *, cache_prompts: bool = True) -> None:
        self.generator = generator
        self.tokenizer = generator.tokenizer
        self._prompt_cache: dict[str, dict[str, torch.Tensor]] | None = {} if cache_prompts else None

    def _prompt(self, record: PromptRecord) -> dict[str, torch.Tensor]:
        """`input_ids` of the rendered prompt (one row) and the processor's image inputs for its images."""
        cached = self._prompt_cache.get(record.id) if self._prompt_cache is not None else None
        if cached is None:
            renderer = self.generator.renderer
            encoded = renderer.encode([self.generator.prompt_text(record)], open_images(record.images))
            encoded.pop("attention_mask", None)
            cached = encoded | {"input_ids": encoded["input_ids"][0]}
            if self._prompt_cache is not None:
                self._prompt_cache[record.id] = cached
        return cached

    def _rows(
        self, examples: Sequence[tuple[PromptRecord, str]]
    ) -> tuple[list[torch.Tensor], list[int], list[dict[str, torch.Tensor]]]:
        rows, prompt_lengths, image_inputs = [], [], []
        for record, demonstration in examples:
            prompt = dict(self._prompt(record))
            prompt_ids = prompt.pop("input_ids")
            response = self.generator.renderer.response_ids(demonstration)  # the template's end of turn
            rows.append(torch.cat([prompt_ids, torch.tensor(response)]))
            prompt_lengths.append(len(prompt_ids))
            if prompt:
                image_inputs.append(prompt)
        return rows, prompt_lengths, image_inputs

    def batch(self, examples: Sequence[tuple[PromptRecord, str]]) -> dict[str, torch.Tensor]:
        """One right-padded row per example, so per-example log-probs can be read off."""
        rows, prompt_lengths, image_inputs = self._rows(examples)
        batch = collate(rows, prompt_lengths, self.tokenizer.pad_token_id)
        if image_inputs:
            batch |= stack_image_inputs(image_inputs, batch["input_ids"].shape[1])
        return batch

    def loss_batch(self, examples: Sequence[tuple[PromptRecord, str]]) -> dict[str, torch.Tensor]:
        """For a loss over all the batch's response tokens: text examples packed around their shared
        prompt prefix (half the tokens, same loss and gradients); image-text examples padded."""
        if self.generator.image_text:
            return self.batch(examples)
        rows, prompt_lengths, _ = self._rows(examples)
        return pack_shared_prefix(rows, prompt_lengths, self.tokenizer.pad_token_id, dtype=self.generator.model.dtype)
