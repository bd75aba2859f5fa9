"""Deterministic tiny models saved as ordinary Hugging Face model directories.

The text model is a Qwen2 (vLLM loads it; on CPU vLLM needs head_dim = hidden/heads ∈ {32, 64}); the
image-text model is LLaVA-style: a CLIP vision tower and a Qwen2 language model, with the PIL-based
CLIP image processor (no torchvision on CPU). Both share one byte-level BPE tokenizer trained on the
task texts, with digits split into single tokens (arithmetic stays learnable) and a ChatML template
whose end-of-turn token `<|im_end|>` is the EOS. Same seed and corpus ⇒ byte-identical files.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPVisionConfig,
    GenerationConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

PAD, BOS_TURN, EOT, IMAGE = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"
SPECIAL_TOKENS = [PAD, BOS_TURN, EOT, IMAGE]

#: ChatML; message content is a string or a list of {"type": "text"|"image"} parts (one <image> each).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}{% else %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class TextModelSpec(BaseModel):
    """Size of the Qwen2 language model (defaults: ~1M parameters, trains on 2 CPU cores)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    vocab_size: int = Field(768, ge=300, description="BPE vocabulary incl. 256 byte tokens and specials.")
    hidden_size: int = Field(128, ge=32)
    num_layers: int = Field(4, ge=1)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int = Field(2, ge=1)
    intermediate_size: int = Field(384, ge=16)
    max_position_embeddings: int = Field(512, ge=64)

    @model_validator(mode="after")
    def _vllm_cpu_head_dim(self) -> TextModelSpec:
        head_dim, remainder = divmod(self.hidden_size, self.num_heads)
        if remainder or head_dim not in (32, 64):
            raise ValueError(
                f"hidden_size / num_heads must be 32 or 64 (vLLM on CPU), got {self.hidden_size}/{self.num_heads}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        return self


#: Named sizes for benchmarks: the tiny default policy, and Qwen2-0.5B's shape (hidden 896, 14 heads of 64,
#: 2 KV heads, MLP 4864) with more layers in place of its 151k-token embedding: ~0.5B parameters over the
#: project's small vocabulary.
NAMED_SIZES: dict[str, TextModelSpec] = {
    "tiny": TextModelSpec(),
    "0.5b": TextModelSpec(hidden_size=896, num_layers=32, num_heads=14, num_kv_heads=2, intermediate_size=4864),
}


class VisionSpec(BaseModel):
    """Size of the CLIP vision tower; image_size/patch_size squared is the number of image tokens."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: int = Field(64, ge=16)
    patch_size: int = Field(8, ge=2)
    hidden_size: int = Field(64, ge=16)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(2, ge=1)
    intermediate_size: int = Field(128, ge=16)

    @property
    def image_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def train_bpe(corpus: Iterable[str], vocab_size: int, special_tokens: list[str]) -> Tokenizer:
    """Byte-level BPE on the task texts, digits split into single tokens; every string is encodable (no
    unknown token). The special tokens take the first ids, in the order given."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return tokenizer


def train_tokenizer(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """The tiny models' tokenizer: BPE on the task texts with the ChatML specials and template."""
    return PreTrainedTokenizerFast(
        tokenizer_object=train_bpe(corpus, vocab_size, SPECIAL_TOKENS),
        eos_token=EOT,
        pad_token=PAD,
        additional_special_tokens=[BOS_TURN, IMAGE],
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
    )


def text_config(spec: TextModelSpec, **overrides: Any) -> Qwen2Config:
    """The Qwen2 config of `spec`; `overrides` set the tokenizer's size and special ids, or (benchmarks on
    random weights) a longer context."""
    values: dict[str, Any] = {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "max_position_embeddings": spec.max_position_embeddings,
        "tie_word_embeddings": False,  # tied weights need special care on vLLM weight reload (docs/design.md §5)
        "torch_dtype": "float32",
    }
    return Qwen2Config(**(values | overrides))


def _text_config(spec: TextModelSpec, tokenizer: PreTrainedTokenizerFast) -> Qwen2Config:
    return text_config(
        spec,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.convert_tokens_to_ids(BOS_TURN),
        eos_token_id=tokenizer.convert_tokens_to_ids(EOT),
        pad_token_id=tokenizer.pad_token_id,
    )


def _generation_config(tokenizer: PreTrainedTokenizerFast) -> GenerationConfig:
    return GenerationConfig(
        eos_token_id=[tokenizer.convert_tokens_to_ids(EOT), tokenizer.pad_token_id],
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True,
        temperature=1.0,
        top_k=50,
    )


def build_text_model(out_dir: Path, corpus: list[str], spec: TextModelSpec | None = None, seed: int = 0) -> Path:
    """Train the tokenizer on `corpus`, initialise a Qwen2 from `seed`, save everything to `out_dir`."""
    spec = spec or TextModelSpec()
    tokenizer = train_tokenizer(corpus, spec.vocab_size)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(_text_config(spec, tokenizer))
    model.generation_config = _generation_config(tokenizer)
    return _save(out_dir, model, tokenizer, {"kind": "text", "seed": seed, "text": spec.model_dump()})


def build_image_text_model(
    out_dir: Path,
    corpus: list[str],
    spec: TextModelSpec | None = None,
    vision: VisionSpec | None = None,
    seed: int = 0,
) -> Path:
    """LLaVA-style model: CLIP vision tower → projector → Qwen2, with a PIL image processor."""
    spec, vision = spec or TextModelSpec(), vision or VisionSpec()
    tokenizer = train_tokenizer(corpus, spec.vocab_size)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            image_size=vision.image_size,
            patch_size=vision.patch_size,
            hidden_size=vision.hidden_size,
            intermediate_size=vision.intermediate_size,
            num_hidden_layers=vision.num_layers,
            num_attention_heads=vision.num_heads,
            projection_dim=vision.hidden_size,
        ),
        text_config=_text_config(spec, tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        image_seq_length=vision.image_tokens,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config = _generation_config(tokenizer)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": vision.image_size},
            crop_size={"height": vision.image_size, "width": vision.image_size},
        ),
        tokenizer=tokenizer,
        patch_size=vision.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's class token, dropped by the "default" strategy
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE,
    )
    spec_record = {"kind": "image-text", "seed": seed, "text": spec.model_dump(), "vision": vision.model_dump()}
    return _save(out_dir, model, processor, spec_record)


def _save(out_dir: Path, model: torch.nn.Module, tokenizer_or_processor: object, spec: dict) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer_or_processor.save_pretrained(out_dir)
    (out_dir / "mpo_model.json").write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    return out_dir
