"""From preference pairs to model inputs: the same prompt the rollout service rendered, plus each response.

A pair is encoded once, by the trainer's host, before any rank sees it, so a pair the model cannot take
is refused (INVALID_ARGUMENT naming the field) while nothing has changed. Micro-batches put the chosen
responses first and the rejected ones after them, in one forward pass; text micro-batches are packed
around the prompt prefix they share (`mpo/models/packing.py`) unless the trainer's `packing` is off.

Truncation rule: the prompt is never cut (its images and question are what the answer is about). When
prompt + response exceeds `max_length`, the response keeps its first `max_length − prompt` tokens and
loses the rest, end-of-turn token included; the pair is counted as truncated. A prompt that leaves no
room for a single response token is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from mpo.config import PromptConfig
from mpo.models.logprobs import collate, stack_image_inputs
from mpo.models.packing import pack_shared_prefix
from mpo.prompts import PromptRenderer
from mpo.serving.validation import InvalidRequest
from mpo.v1 import common_pb2


@dataclass(frozen=True)
class EncodedPair:
    id: str
    prompt_ids: torch.Tensor  # image tokens expanded
    #: The processor's other outputs the forward needs (pixel_values, image_grid_thw, image_sizes, ...).
    image_inputs: dict[str, torch.Tensor]
    chosen_ids: torch.Tensor  # response + end-of-turn (unless truncated)
    rejected_ids: torch.Tensor
    truncated: bool

    @property
    def length(self) -> int:
        """Longest row this pair adds to a micro-batch (what length bucketing sorts by)."""
        return len(self.prompt_ids) + max(len(self.chosen_ids), len(self.rejected_ids))

    @property
    def response_tokens(self) -> int:
        return len(self.chosen_ids) + len(self.rejected_ids)


@dataclass(frozen=True)
class EncodedPrompt:
    ids: torch.Tensor  # image tokens expanded
    image_inputs: dict[str, torch.Tensor]


class PairEncoder:
    def __init__(
        self,
        model_dir: Path,
        *,
        max_length: int,
        readable_roots: Sequence[Path],
        prompt: PromptConfig | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        self.renderer = PromptRenderer(
            model_dir,
            max_model_len=max_length,
            readable_roots=readable_roots,
            prompt=prompt,
            trust_remote_code=trust_remote_code,
        )
        self.tokenizer = self.renderer.tokenizer
        self.max_length = max_length

    def _response(self, text: str, room: int, *, ended: bool) -> tuple[torch.Tensor, bool]:
        ids = self.renderer.chat_renderer.response_ids(text, ended=ended)  # the template's end of turn, not eos
        return torch.tensor(ids[:room], dtype=torch.long), len(ids) > room

    def encode_prompt(self, prompt: common_pb2.Prompt, field: str) -> EncodedPrompt:
        """The rendered prompt with its decoded images; `field` names it in errors."""
        text, images = self.renderer.chat(prompt, field)
        inputs = self.renderer.model_inputs(text, images)
        prompt_ids = inputs.pop("input_ids")[0]
        if len(prompt_ids) >= self.max_length:
            raise InvalidRequest(
                field,
                f"prompt of {len(prompt_ids)} tokens leaves no room for a response within the trainer's "
                f"max_length of {self.max_length} tokens",
            )
        return EncodedPrompt(prompt_ids, inputs)

    def encode(self, pair: common_pb2.PreferencePair, field: str, prompt: EncodedPrompt | None = None) -> EncodedPair:
        """`prompt`: the encoded prompt `pair` names by id; None for a pair that carries its own."""
        prompt = prompt or self.encode_prompt(pair.prompt, f"{field}.prompt")
        room = self.max_length - len(prompt.ids)
        chosen, chosen_cut = self._response(pair.chosen, room, ended=not pair.unterminated)
        rejected, rejected_cut = self._response(pair.rejected, room, ended=not pair.unterminated)
        return EncodedPair(
            id=pair.id,
            prompt_ids=prompt.ids,
            image_inputs=prompt.image_inputs,
            chosen_ids=chosen,
            rejected_ids=rejected,
            truncated=chosen_cut or rejected_cut,
        )

    def encode_all(
        self, pairs: Sequence[common_pb2.PreferencePair], prompts: Sequence[common_pb2.Prompt] = ()
    ) -> list[EncodedPair]:
        """Pairs as validated (`mpo.serving.validation.check_pairs`): each of `prompts` is rendered and its
        images decoded once per call, its pairs sharing the tensors (pickled once for the ranks); a pair with
        an inline prompt is encoded on its own, as before `prompt_id` existed."""
        encoded = {prompt.id: self.encode_prompt(prompt, f"prompts[{i}]") for i, prompt in enumerate(prompts)}
        return [
            self.encode(pair, f"pairs[{i}]", None if pair.HasField("prompt") else encoded[pair.prompt_id])
            for i, pair in enumerate(pairs)
        ]


def pair_batch(
    pairs: Sequence[EncodedPair], pad_id: int, *, pack: bool = False, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """One forward's inputs for the sequences [chosen_0 … chosen_m−1, rejected_0 … rejected_m−1].

    Padded: one row per sequence. Packed (`pack`, text pairs only): the prompt prefix every sequence
    shares stored once per row, the rest several to a row (`pack_shared_prefix`, attention mask in
    `dtype`), with `example_index` naming each sequence by its place in that order.
    """
    rows = [torch.cat([p.prompt_ids, p.chosen_ids]) for p in pairs]
    rows += [torch.cat([p.prompt_ids, p.rejected_ids]) for p in pairs]
    prompt_lengths = [len(p.prompt_ids) for p in pairs] * 2
    image_inputs = [p.image_inputs for p in pairs if p.image_inputs]
    if pack and not image_inputs:
        return pack_shared_prefix(rows, prompt_lengths, pad_id, dtype=dtype)
    batch = collate(rows, prompt_lengths, pad_id)
    if image_inputs:
        batch |= stack_image_inputs(image_inputs + image_inputs, batch["input_ids"].shape[1])
    return batch
