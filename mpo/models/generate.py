"""Batched generation with transformers for the tiny text and image-text models.

vLLM is the production engine; this path serves image-text models on CPU (where vLLM cannot load
them, DESIGN §5), the bootstrap's evaluations, and any model directory transformers can load.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from mpo.data.prompting import chat_messages
from mpo.data.records import PromptRecord


@dataclass(frozen=True)
class Sampling:
    n: int = 1
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 50
    max_new_tokens: int = 96
    seed: int | None = None


def is_image_text_model(model_dir: Path) -> bool:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return "vision_config" in config


def context_length(model_dir: Path) -> int:
    """Longest sequence (prompt + answer) the model's position embeddings cover."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return int(config.get("text_config", config)["max_position_embeddings"])


class TransformersGenerator:
    """Loads a model directory once and answers batches of prompt records."""

    def __init__(self, model_dir: Path | str, *, model: torch.nn.Module | None = None, batch_size: int = 64) -> None:
        self.model_dir = Path(model_dir)
        self.image_text = is_image_text_model(self.model_dir)
        if self.image_text:
            self.processor = AutoProcessor.from_pretrained(self.model_dir)
            self.tokenizer = self.processor.tokenizer
            loader = AutoModelForImageTextToText
        else:
            self.processor = None
            self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
            loader = AutoModelForCausalLM
        self.tokenizer.padding_side = "left"  # generation continues at the right edge of every row
        self.model = model if model is not None else loader.from_pretrained(self.model_dir)
        self.batch_size = batch_size

    def prompt_text(self, record: PromptRecord) -> str:
        return self.tokenizer.apply_chat_template(chat_messages(record), tokenize=False, add_generation_prompt=True)

    def encode(self, records: Sequence[PromptRecord]) -> dict[str, torch.Tensor]:
        texts = [self.prompt_text(r) for r in records]
        if not self.image_text:
            return self.tokenizer(texts, return_tensors="pt", padding=True)
        images = [Image.open(path).convert("RGB") for r in records for path in r.images]
        return self.processor(images=images or None, text=texts, return_tensors="pt", padding=True)

    @torch.no_grad()
    def generate(self, records: Sequence[PromptRecord], sampling: Sampling = Sampling()) -> list[list[str]]:
        """`sampling.n` decoded responses per record, in record order."""
        was_training = self.model.training
        self.model.eval()
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        responses: list[list[str]] = []
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
            )
            new_tokens = output[:, inputs["input_ids"].shape[1] :]
            texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            responses.extend(texts[i * sampling.n : (i + 1) * sampling.n] for i in range(len(batch)))
        self.model.train(was_training)
        return responses
