"""Shared-prefix packing: several examples per row, the prompt prefix they all share stored once.

Every built-in prompt opens with the same instruction and chat scaffolding (~40 of an arith example's
~90 tokens), and right-padding a batch to its longest row adds another ~28%. Under causal attention
the shared prefix has the same hidden states in every example, so a row holds it once, followed by
several examples' remaining tokens. A block mask lets each example attend to the prefix and to its own
earlier tokens only, and its position ids continue from the prefix, so every labelled token's logits,
and so the loss and its gradients, equal those of the padded batch (tests/test_packing.py) while the
model runs on about half the tokens. Per-example sums (the trainer's chosen and rejected log-probs)
come from `example_index`, which says whose each labelled position is.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mpo.models.logprobs import IGNORE_INDEX

#: Positions per packed row. Measured on the arith warm start (2 CPU cores): long enough that a row
#: holds the prefix once for ~4 examples, short enough that attention over a row stays cheap.
ROW_TOKENS = 256


def shared_prefix_length(rows: Sequence[torch.Tensor], prompt_lengths: Sequence[int]) -> int:
    """Length of the token prefix all rows share, ending at least one token before the shortest prompt.

    Keeping a prompt token in every example's own part means the token before its first labelled one
    is its own, so the causal shift never predicts one example's token from another's context.
    """
    limit = min(prompt_lengths) - 1
    first = rows[0]
    length = 0
    while length < limit and all(row[length] == first[length] for row in rows[1:]):
        length += 1
    return length


def pack_shared_prefix(
    rows: Sequence[torch.Tensor],
    prompt_lengths: Sequence[int],
    pad_id: int,
    *,
    row_tokens: int = ROW_TOKENS,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """`input_ids`, `position_ids`, an additive 4-D `attention_mask`, response-only `labels`, and
    `example_index` (the index in `rows` of each labelled position's example, -1 elsewhere).

    Examples go to rows first-fit, longest first; a row is `prefix | example | example | ... | pad`.
    A row is widened to fit the longest example when `row_tokens` is too short for it.
    """
    if not rows or len(rows) != len(prompt_lengths):
        raise ValueError(f"need one prompt length per row, got {len(rows)} rows and {len(prompt_lengths)} lengths")
    prefix = shared_prefix_length(rows, prompt_lengths)
    capacity = max(row_tokens, max(len(row) for row in rows)) - prefix
    bins: list[list[int]] = []
    fill: list[int] = []
    for index in sorted(range(len(rows)), key=lambda i: -len(rows[i])):
        size = len(rows[index]) - prefix
        target = next((b for b, used in enumerate(fill) if used + size <= capacity), None)
        if target is None:
            bins.append([])
            fill.append(0)
            target = len(bins) - 1
        bins[target].append(index)
        fill[target] += size
    width = prefix + max(fill)
    input_ids = torch.full((len(bins), width), pad_id, dtype=torch.long)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    example_index = torch.full_like(input_ids, -1)
    position_ids = torch.zeros_like(input_ids)
    segments = torch.full_like(input_ids, -1)  # 0: the shared prefix, k: the row's k-th example, -1: padding
    for r, members in enumerate(bins):
        input_ids[r, :prefix] = rows[members[0]][:prefix]
        position_ids[r, :prefix] = torch.arange(prefix)
        segments[r, :prefix] = 0
        start = prefix
        for k, index in enumerate(members, start=1):
            own = rows[index][prefix:]
            end = start + len(own)
            input_ids[r, start:end] = own
            position_ids[r, start:end] = torch.arange(prefix, prefix + len(own))
            segments[r, start:end] = k
            response = start + prompt_lengths[index] - prefix
            labels[r, response:end] = own[prompt_lengths[index] - prefix :]
            example_index[r, response:end] = index
            start = end
        position_ids[r, start:] = torch.arange(width - start)
    query, key = segments.unsqueeze(2), segments.unsqueeze(1)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    allowed = causal & ((query == key) | ((key == 0) & (query > 0)))  # padding sees only padding, never empty
    attention_mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "attention_mask": attention_mask.unsqueeze(1),
        "labels": labels,
        "example_index": example_index,
    }
