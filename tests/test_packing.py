"""Shared-prefix packing gives the padded batch's losses, per-example log-probs and gradients on fewer
positions: for the warm start's demonstrations and for the trainer's preference pairs."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import Qwen2ForCausalLM

from mpo.data.tasks import TASKS
from mpo.models.corpus import task_corpus
from mpo.models.demonstrations import DemonstrationBatcher
from mpo.models.generate import TransformersGenerator
from mpo.models.logprobs import IGNORE_INDEX, collate, model_logprobs
from mpo.models.packing import pack_shared_prefix, shared_prefix_length
from mpo.models.tiny import TextModelSpec, build_text_model
from mpo.trainer.batching import PairEncoder, pair_batch
from mpo.v1 import common_pb2


def loss_and_gradient(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[float, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss = model_logprobs(model, batch).token_mean_nll()
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])


def sums_and_gradient(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], weights: torch.Tensor
) -> tuple[torch.Tensor, list[int], torch.Tensor]:
    """Per-example log-prob sums, token counts, and the gradient of their weighted total (distinct
    weights per example, so a sum credited to the wrong example changes the gradient)."""
    model.zero_grad(set_to_none=True)
    logps = model_logprobs(model, batch, len(weights))
    (weights * logps.summed).sum().backward()
    return logps.summed.detach(), logps.token_counts.tolist(), torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.fixture(scope="module")
def arith_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = TextModelSpec(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128)
    corpus = task_corpus(["arith"], seed=0, per_task=200)
    return build_text_model(tmp_path_factory.mktemp("packing") / "model", corpus, spec, seed=0)


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


def test_packed_rows_give_each_example_its_own_log_prob_sum(tiny_causal_lm: Qwen2ForCausalLM) -> None:
    """Per-example sums (what DPO compares) survive packing, gradients of a weighted sum included."""
    rows, prompt_lengths = synthetic_examples(12, prefix=10)
    weights = torch.linspace(-1.0, 2.0, len(rows))
    padded = sums_and_gradient(tiny_causal_lm, collate(rows, prompt_lengths, 0), weights)
    packed = sums_and_gradient(tiny_causal_lm, pack_shared_prefix(rows, prompt_lengths, 0, row_tokens=48), weights)
    torch.testing.assert_close(packed[0], padded[0], rtol=1e-5, atol=1e-5)
    assert packed[1] == padded[1] == [len(r) - n for r, n in zip(rows, prompt_lengths, strict=True)]
    torch.testing.assert_close(packed[2], padded[2], rtol=1e-4, atol=1e-6)


def preference_pairs(count: int) -> list[common_pb2.PreferencePair]:
    """Arith prompts, their demonstration as chosen and a wrong final answer as rejected."""
    rng = random.Random(0)
    task = TASKS["arith"]
    pairs = []
    for record in task.generate(count, 3, None):
        chosen = task.demonstration(record, rng) or ""
        prompt = common_pb2.Prompt(id=record.id, question=record.question, task="arith", answer=record.answer)
        wrong = chosen.rsplit("Final answer:", 1)[0] + f"Final answer: {int(record.answer or 0) + 1}"
        pairs.append(common_pb2.PreferencePair(id=f"p-{record.id}", prompt=prompt, chosen=chosen, rejected=wrong))
    return pairs


def test_trainer_micro_batches_pack_to_the_padded_chosen_and_rejected_log_probs(arith_model: Path) -> None:
    """The trainer's own encoder and micro-batch layout (chosen first, then rejected) on real prompts."""
    encoder = PairEncoder(arith_model, max_length=256, readable_roots=[])
    pairs = encoder.encode_all(preference_pairs(8))
    pad_id = encoder.tokenizer.pad_token_id
    model = TransformersGenerator(arith_model).model.train()
    padded_batch, packed_batch = pair_batch(pairs, pad_id), pair_batch(pairs, pad_id, pack=True)
    weights = torch.randn(2 * len(pairs), generator=torch.Generator().manual_seed(0))
    padded = sums_and_gradient(model, padded_batch, weights)
    packed = sums_and_gradient(model, packed_batch, weights)
    torch.testing.assert_close(packed[0], padded[0], rtol=1e-5, atol=1e-4)
    assert packed[1] == padded[1] == [len(p.chosen_ids) for p in pairs] + [len(p.rejected_ids) for p in pairs]
    torch.testing.assert_close(packed[2], padded[2], rtol=1e-4, atol=1e-5)
    assert packed_batch["input_ids"].numel() < 0.7 * padded_batch["input_ids"].numel()


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


def test_warm_start_batches_of_real_arith_demonstrations_pack_to_fewer_positions(arith_model: Path) -> None:
    """The bootstrap's own batcher, tokenizer and prompts: same loss and gradients, far fewer positions."""
    generator = TransformersGenerator(arith_model)
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
