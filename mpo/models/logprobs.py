"""Per-sequence log-probabilities of the response tokens — the quantity every MPO term is built from.

Convention (shared with the data pipeline): ``labels`` has the same shape as ``input_ids``; prompt
tokens, image placeholder tokens and padding are ``IGNORE_INDEX``; the response tokens *and* the
end-of-turn token that closes the response keep their ids. Logits at position ``t`` predict the
label at ``t + 1`` (causal shift), exactly as Hugging Face models compute their own loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class SequenceLogProbs:
    """Summed response log-probs per sequence, and how many response tokens each sum covers."""

    summed: torch.Tensor  # [batch], differentiable w.r.t. the logits
    token_counts: torch.Tensor  # [batch], int64

    def token_mean_nll(self) -> torch.Tensor:
        """Cross-entropy averaged over every response token of the batch (the SFT loss's reduction)."""
        return -self.summed.sum() / self.token_counts.sum().clamp(min=1)


def response_labels(
    input_ids: torch.Tensor, prompt_lengths: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Labels that keep only the response (right-padded rows: ``prompt | response + end-of-turn | pad``).

    Image placeholder tokens live in the prompt, so they are masked together with it.
    """
    if input_ids.shape != attention_mask.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} differ")
    if prompt_lengths.shape != input_ids.shape[:1]:
        raise ValueError(f"prompt_lengths must have shape ({input_ids.shape[0]},), got {tuple(prompt_lengths.shape)}")
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
    in_response = (positions >= prompt_lengths.to(input_ids.device).unsqueeze(1)) & attention_mask.bool()
    return torch.where(in_response, input_ids, torch.full_like(input_ids, IGNORE_INDEX))


def collate(rows: Sequence[torch.Tensor], prompt_lengths: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded `input_ids`, `attention_mask`, and `labels` that keep only the response tokens."""
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = row
        attention_mask[i, : len(row)] = 1
    labels = response_labels(input_ids, torch.tensor(list(prompt_lengths)), attention_mask)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def is_token_aligned(key: str) -> bool:
    """Processor outputs with one value per prompt token (Qwen2-VL's `mm_token_type_ids`), not per image."""
    return key.endswith("token_type_ids")


def stack_image_inputs(per_row: Sequence[Mapping[str, torch.Tensor]], width: int) -> dict[str, torch.Tensor]:
    """The processor's other outputs of several right-padded rows (`width` wide) as one batch's.

    Per-image outputs (`pixel_values`, Qwen2-VL's `image_grid_thw`, LLaVA-NeXT's `image_sizes`, ...) are
    concatenated along their first dimension in row order; where rows differ beyond it (LLaVA-NeXT: another
    number of patches per image size) they are zero-padded to the largest, as the processor pads within one
    call, and the model reads the real extent from the sizes it is given. Per-token outputs hold each row's
    prompt values, then 0 (text) over the response and the padding."""
    keys = list(dict.fromkeys(key for row in per_row for key in row))
    stacked: dict[str, torch.Tensor] = {}
    for key in keys:
        parts = [row[key] for row in per_row if key in row]
        if is_token_aligned(key):
            aligned = torch.zeros((len(parts), width), dtype=parts[0].dtype)
            for i, part in enumerate(parts):
                aligned[i, : part.shape[-1]] = part.reshape(-1)
            stacked[key] = aligned
            continue
        widest = [max(part.shape[d] for part in parts) for d in range(1, parts[0].dim())]
        padded = []
        for part in parts:
            pad: list[int] = []
            for d in reversed(range(1, part.dim())):
                pad += [0, widest[d - 1] - part.shape[d]]
            padded.append(torch.nn.functional.pad(part, pad) if any(pad) else part)
        stacked[key] = torch.cat(padded)
    return stacked


def sequence_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    example_index: torch.Tensor | None = None,
    examples: int | None = None,
) -> SequenceLogProbs:
    """Sum of ``log p(label_t | prefix)`` over the labelled (response) tokens of each sequence.

    One sequence per row by default; a packed batch (several examples per row, `mpo/models/packing.py`)
    passes `example_index` (shaped like `labels`: the example each labelled position belongs to) and
    gets one sum per example, for `examples` of them (default: up to the highest index it holds).

    Works for causal LMs and for image-text models whose ``input_ids`` carry the expanded image tokens
    (LLaVA, Qwen2-VL, InternVL): logits and labels then have the same length and the image tokens are
    simply unlabelled prompt positions. Computed via ``logsumexp`` in fp32 one row at a time, so the
    full ``[batch, seq, vocab]`` log-softmax is never materialised.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be [batch, seq, vocab], got shape {tuple(logits.shape)}")
    if logits.shape[:2] != labels.shape:
        raise ValueError(
            f"logits {tuple(logits.shape[:2])} and labels {tuple(labels.shape)} must cover the same "
            "positions; for image-text models pass input_ids with the image tokens already expanded"
        )
    if example_index is None:
        example_index = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(labels)
    elif example_index.shape != labels.shape:
        raise ValueError(f"example_index {tuple(example_index.shape)} and labels {tuple(labels.shape)} differ")
    if examples is None:
        examples = int(example_index.max()) + 1
    shifted_logits = logits[:, :-1, :]
    shifted_labels = labels[:, 1:]
    mask = shifted_labels != IGNORE_INDEX
    safe_labels = torch.where(mask, shifted_labels, torch.zeros_like(shifted_labels))

    per_token = []
    for row_logits, row_labels in zip(shifted_logits, safe_labels, strict=True):
        row_logits = row_logits.float()
        picked = row_logits.gather(-1, row_labels.unsqueeze(-1)).squeeze(-1)
        per_token.append(picked - torch.logsumexp(row_logits, dim=-1))
    token_logps = torch.stack(per_token)[mask]
    owners = example_index[:, 1:].to(token_logps.device)[mask]
    summed = token_logps.new_zeros(examples).index_add(0, owners, token_logps)
    return SequenceLogProbs(summed=summed, token_counts=torch.bincount(owners, minlength=examples))


def model_logprobs(
    model: torch.nn.Module, batch: Mapping[str, torch.Tensor], examples: int | None = None
) -> SequenceLogProbs:
    """Run `model` on a padded (`collate`) or packed (`pack_shared_prefix`) batch of `examples` sequences.

    No KV cache: training needs none, and with one transformers ignores a packed batch's 4-D mask.
    """
    inputs = dict(batch)
    labels = inputs.pop("labels")
    example_index = inputs.pop("example_index", None)
    logits = model(**inputs, use_cache=False).logits
    return sequence_logprobs(logits, labels, example_index=example_index, examples=examples)
