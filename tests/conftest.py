"""Shared fixtures: tiny, randomly initialised Hugging Face models built in-process (no model hub)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import (
    CLIPVisionConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
)

VOCAB_SIZE = 64
IMAGE_TOKEN_ID = 63
IMAGE_SIZE, PATCH_SIZE = 28, 14
IMAGE_TOKENS = (IMAGE_SIZE // PATCH_SIZE) ** 2  # LLaVA's "default" strategy drops the CLS feature


def tiny_qwen2_config() -> Qwen2Config:
    return Qwen2Config(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )


@pytest.fixture
def tiny_causal_lm() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    return Qwen2ForCausalLM(tiny_qwen2_config()).eval()


@pytest.fixture
def tiny_llava() -> LlavaForConditionalGeneration:
    torch.manual_seed(0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=IMAGE_SIZE,
            patch_size=PATCH_SIZE,
        ),
        text_config=tiny_qwen2_config(),
        image_token_id=IMAGE_TOKEN_ID,
        image_seq_length=IMAGE_TOKENS,
    )
    return LlavaForConditionalGeneration(config).eval()


@pytest.fixture(scope="session")
def sums_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny policy bootstrapped on one-step sums (tests/controller_helpers.py), built once: the round
    loop, controller and `mpo run` tests only read it."""
    from tests.controller_helpers import bootstrapped_policy  # imports DeepSpeed: only where it is used

    return bootstrapped_policy(tmp_path_factory.mktemp("sums-policy"))
