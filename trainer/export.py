"""`mpo export`: a committed trainer checkpoint → a plain Hugging Face model directory.

The full fp32 weights are merged from the ranks' ZeRO shards by DeepSpeed's own converter (no process
group needed), loaded into the base model's architecture and saved with its tokenizer or processor, so
vLLM and transformers load the result like any model directory. The weights are saved in fp32 by default,
or cast once at the end to bf16 / fp16 (half the size, what a GPU engine serves anyway).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    GenerationConfig,
)

from mpo.models.loading import is_image_text_model
from mpo.trainer.checkpoints import read_checkpoint


def export_checkpoint(checkpoint_dir: Path, out_dir: Path, *, dtype: torch.dtype = torch.float32) -> Path:
    if not torch.cuda.is_available():  # DeepSpeed otherwise probes for a GPU accelerator at import
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    checkpoint = read_checkpoint(Path(checkpoint_dir))
    base = Path(checkpoint.meta["model"])
    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.path), tag=checkpoint.name)
    image_text = is_image_text_model(base)
    loader = AutoModelForImageTextToText if image_text else AutoModelForCausalLM
    model = loader.from_pretrained(base, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{checkpoint.path} does not match {base}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.to(dtype).save_pretrained(out_dir, safe_serialization=True)  # config.json records the dtype
    (AutoProcessor if image_text else AutoTokenizer).from_pretrained(base).save_pretrained(out_dir)
    if (base / "generation_config.json").exists():
        GenerationConfig.from_pretrained(base).save_pretrained(out_dir)
    return Path(out_dir)
