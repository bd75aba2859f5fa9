"""What a model directory is and how every part of OnlineMPO loads it.

One place decides text vs image-text, the context length and the transformers classes, and passes
`trust_remote_code` (explicit, off by default) to every loader, so rollout, trainer, warm start,
evaluation and export always agree on how a user's model directory is read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)


def _config(model_dir: Path) -> dict[str, Any]:
    path = Path(model_dir) / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{model_dir}: not a Hugging Face model directory (no config.json)") from None


def is_image_text_model(model_dir: Path) -> bool:
    """Image-text models carry a vision config beside their text config (LLaVA, Qwen2-VL, InternVL, ...)."""
    return "vision_config" in _config(model_dir)


def context_length(model_dir: Path) -> int:
    """Longest sequence (prompt + answer) the model's position embeddings cover."""
    config = _config(model_dir)
    return int(config.get("text_config", config)["max_position_embeddings"])


def model_class(model_dir: Path) -> type:
    return AutoModelForImageTextToText if is_image_text_model(model_dir) else AutoModelForCausalLM


def load_model(
    model_dir: Path, *, trust_remote_code: bool = False, dtype: torch.dtype | None = None
) -> torch.nn.Module:
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    return model_class(model_dir).from_pretrained(model_dir, **kwargs)


def load_processing(model_dir: Path, *, trust_remote_code: bool = False) -> tuple[Any | None, PreTrainedTokenizerBase]:
    """(processor, tokenizer): image-text models go through their processor (it expands image tokens and
    holds the chat template that places them); text models have only a tokenizer."""
    if is_image_text_model(model_dir):
        processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        return processor, processor.tokenizer
    return None, AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
