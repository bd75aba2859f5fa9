"""Shared-prefix packing gives the padded batch's loss and gradients on fewer positions."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import Qwen2ForCausalLM

from mpo.data.tasks import TASKS
from mpo.models.corpus import task_corpus
from mpo.models.generate import TransformersGenerator
from mpo.models.tiny import TextModelSpec, build_text_model
from mpo.trainer.logprobs import IGNORE_INDEX, collate, sequence_logprobs
from mpo.trainer.packing import pack_shared_prefix, shared_prefix_length
from mpo.trainer.sft import DemonstrationBatcher


def loss_and_gradient(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[float, torch.Tensor]:
    inputs = dict(batch)
    labels = inputs.pop("labels")
    model.zero_grad(set_to_none=True)
    loss = sequence_logprobs(model(**inputs, use_cache=False).logits, labels).token_mean_nll()
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])


def synthetic_examples(count: int, prefix: int, seed: int = 0) -> tuple[list[torch.Tensor], list[int]]:
    """Rows of `prefix` shared tokens, a 2-6-token question and a 3-12-token response."""
    rng = random.Random(seed)
    shared = [rng.randrange(1, 60) for _ in range(prefix)]
    rows, prompt_lengths = [], []
    for _ in range(count):
        prompt = shared + [rng.randrange(1, 60) for _ in range(rng.randint(2, 6))]
        response = [rng.randrange(1, 60) for _ in range(rng.randint(3, 12))]
        rows.append(torch.tensor(prompt + response))
        prompt_lengths.append(len(prompt))
    return rows, prompt_lengths


@pytest.mark.parametrize(("prefix", "row_tokens"), [(10, 48), (10, 8), (0, 40)])
def test_packed_batch_has_the_padded_batch_loss_and_gradients(
    tiny_causal_lm: Qwen2ForCausalLM, prefix: int, row_tokens: int
) -> None:
    rows, prompt_lengths = synthetic_examples(12, prefix)
    padded = collate(rows, prompt_lengths, pad_id=0)
    packed = pack_shared_prefix(rows, prompt_lengths, pad_id=0, row_tokens=row_tokens)

    padded_loss, padded_grad = loss_and_gradient(tiny_causal_lm, padded)
    packed_loss, packed_grad = loss_and_gradient(tiny_causal_lm, packed)

    assert packed_loss == pytest.approx(padded_loss, rel=1e-5)
    torch.testing.assert_close(packed_grad, padded_grad, rtol=1e-4, atol=1e-6)
    assert int((packed["labels"] != IGNORE_INDEX).sum()) == int((padded["labels"] != IGNORE_INDEX).sum())


def test_layout_stores_the_prefix_once_per_row_and_every_example_whole() -> None:
    rows, prompt_lengths = synthetic_examples(12, prefix=10)
    packed = pack_shared_prefix(rows, prompt_lengths, pad_id=0, row_tokens=48)
    input_ids, positions = packed["input_ids"], packed["position_ids"]

    assert input_ids.shape[1] <= 48 and input_ids.shape[0] < len(rows)
    assert (input_ids[:, :10] == rows[0][:10]).all()
    # Reading each row back, split where the positions restart at 10, gives every example exactly once.
    unpacked = []
    for row, row_positions in zip(input_ids.tolist(), positions.tolist(), strict=True):
        padding = next((i for i in range(10, len(row)) if row_positions[i] < 10), len(row))
        starts = [i for i in range(10, padding) if row_positions[i] == 10]
        for start, end in zip(starts, [*starts[1:], padding], strict=True):
            assert row_positions[start:end] == list(range(10, 10 + end - start))
            unpacked.append(tuple(row[:10] + row[start:end]))
    assert sorted(unpacked) == sorted(tuple(r.tolist()) for r in rows)


def test_an_example_longer_than_a_row_widens_the_rows() -> None:
    rows, prompt_lengths = synthetic_examples(4, prefix=4)
    packed = pack_shared_prefix(rows, prompt_lengths, pad_id=0, row_tokens=5)
    assert packed["input_ids"].shape == (4, max(len(r) for r in rows))


def test_shared_prefix_stops_before_the_shortest_prompt() -> None:
    rows = [torch.tensor([5, 6, 7, 8, 9]), torch.tensor([5, 6, 7, 1, 2]), torch.tensor([5, 6, 7, 8])]
    assert shared_prefix_length(rows, [4, 4, 3]) == 2  # the 3-token prompt keeps one token of its own
    assert shared_prefix_length(rows, [4, 4, 4]) == 3
    assert shared_prefix_length([torch.tensor([1, 2]), torch.tensor([3, 2])], [1, 1]) == 0


def test_mismatched_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="one prompt length per row"):
        pack_shared_prefix([torch.tensor([1, 2, 3])], [1, 2], pad_id=0)


def test_warm_start_batches_of_real_arith_demonstrations_pack_to_fewer_positions(tmp_path: Path) -> None:
    """The bootstrap's own batcher, tokenizer and prompts: same loss and gradients, far fewer positions."""
    spec = TextModelSpec(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128)
    model_dir = build_text_model(tmp_path / "model", task_corpus(["arith"], seed=0, per_task=200), spec, seed=0)
    generator = TransformersGenerator(model_dir)
    generator.model.train()
    rng = random.Random(0)
    task = TASKS["arith"]
    records = task.generate(64, 0, None)
    examples = [(record, task.demonstration(record, rng)) for record in records[:32]]
    batcher = DemonstrationBatcher(generator)

    padded, packed = batcher.batch(examples), batcher.loss_batch(examples)

    padded_loss, padded_grad = loss_and_gradient(generator.model, padded)
    packed_loss, packed_grad = loss_and_gradient(generator.model, packed)
    assert packed_loss == pytest.approx(padded_loss, rel=1e-5)
    torch.testing.assert_close(packed_grad, padded_grad, rtol=1e-4, atol=1e-6)
    assert packed["input_ids"].numel() < 0.7 * padded["input_ids"].numel()
