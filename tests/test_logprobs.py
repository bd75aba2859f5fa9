"""Sequence log-probs over response tokens: arithmetic, masking, and agreement with HF models' own loss."""

from __future__ import annotations

import math

import pytest
import torch

from mpo.trainer import IGNORE_INDEX, response_labels, sequence_logprobs
from tests.conftest import IMAGE_SIZE, IMAGE_TOKEN_ID, IMAGE_TOKENS, VOCAB_SIZE


def test_hand_computed_sum_over_labelled_tokens() -> None:
    # vocab of 2; logits at t predict the label at t+1.
    logits = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 1.0]]])
    labels = torch.tensor([[IGNORE_INDEX, 0, 1]])
    out = sequence_logprobs(logits, labels)
    # t=0 predicts label 0 from logits (0, 0): log(1/2).
    # t=1 predicts label 1 from logits (2, 0): 0 - log(e^2 + e^0).
    expected = math.log(0.5) + (0.0 - math.log(math.exp(2.0) + 1.0))
    assert out.summed.item() == pytest.approx(expected, abs=1e-6)
    assert out.token_counts.tolist() == [2]
    assert out.token_mean_nll().item() == pytest.approx(-expected / 2, abs=1e-6)


def test_response_labels_keep_response_and_end_of_turn_only() -> None:
    eot, pad = 9, 0
    input_ids = torch.tensor([[5, 6, 7, 8, eot, pad, pad], [5, 6, 7, 7, 8, 8, eot]])
    attention_mask = (torch.arange(7) < torch.tensor([[5], [7]])).long()
    labels = response_labels(input_ids, torch.tensor([3, 2]), attention_mask)
    x = IGNORE_INDEX
    assert labels.tolist() == [[x, x, x, 8, eot, x, x], [x, x, 7, 7, 8, 8, eot]]


def test_prompt_and_padding_never_count_but_end_of_turn_does() -> None:
    torch.manual_seed(0)
    eot, pad = 9, 0
    input_ids = torch.tensor([[1, 2, 3, 4, eot, pad, pad]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0]])
    labels = response_labels(input_ids, torch.tensor([3]), attention_mask)
    logits = torch.randn(1, 7, 16)
    base = sequence_logprobs(logits, labels).summed

    # Logits at t predict token t+1. Response tokens sit at 3 and 4 (eot), so only logits 2 and 3 matter.
    for position, counts in [
        (0, False),
        (1, False),
        (2, True),
        (3, True),
        (4, False),
        (5, False),
        (6, False),
    ]:
        perturbed = logits.clone()
        perturbed[0, position] += torch.randn(16) * 3
        changed = not torch.allclose(sequence_logprobs(perturbed, labels).summed, base)
        assert changed == counts, f"logits at position {position}: counts={counts} but changed={changed}"

    # Dropping the end-of-turn token from the labels changes the sum: it is part of the response.
    without_eot = labels.clone()
    without_eot[0, 4] = IGNORE_INDEX
    assert not torch.allclose(sequence_logprobs(logits, without_eot).summed, base)


def test_matches_causal_lm_own_loss(tiny_causal_lm) -> None:
    torch.manual_seed(1)
    input_ids = torch.randint(1, VOCAB_SIZE - 1, (3, 12))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0
    labels = response_labels(input_ids, torch.tensor([4, 6, 2]), attention_mask)
    with torch.no_grad():
        out = tiny_causal_lm(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    logps = sequence_logprobs(out.logits, labels)
    # HF's loss is the token-mean cross-entropy over the same labelled tokens.
    assert logps.token_mean_nll().item() == pytest.approx(out.loss.item(), rel=1e-5)
    assert logps.token_counts.tolist() == [8, 3, 10]


def test_image_text_model_with_image_tokens_in_inputs(tiny_llava) -> None:
    torch.manual_seed(2)
    prompt = torch.cat([torch.tensor([1]), torch.full((IMAGE_TOKENS,), IMAGE_TOKEN_ID), torch.tensor([3, 4])])
    response = torch.tensor([10, 11, 12, 9])  # ends with the end-of-turn token
    input_ids = torch.cat([prompt, response]).unsqueeze(0).repeat(2, 1)
    attention_mask = torch.ones_like(input_ids)
    labels = response_labels(input_ids, torch.tensor([len(prompt)] * 2), attention_mask)
    assert not (labels == IMAGE_TOKEN_ID).any(), "image tokens belong to the prompt and are never labelled"

    pixel_values = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    with torch.no_grad():
        out = tiny_llava(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values, labels=labels)
    logps = sequence_logprobs(out.logits, labels)
    assert logps.token_counts.tolist() == [4, 4]
    assert logps.token_mean_nll().item() == pytest.approx(out.loss.item(), rel=1e-5)
    # The image conditions the response: different pixels give a different log-prob.
    assert not torch.allclose(logps.summed[0], logps.summed[1])


def test_rejects_logits_that_do_not_cover_the_labels() -> None:
    with pytest.raises(ValueError, match="same positions"):
        sequence_logprobs(torch.zeros(1, 5, 4), torch.zeros(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[batch, seq, vocab\]"):
        sequence_logprobs(torch.zeros(5, 4), torch.zeros(1, 5, dtype=torch.long))
