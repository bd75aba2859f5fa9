"""`mpo export`: a committed trainer checkpoint → a plain Hugging Face model directory.

The full fp32 weights are merged from the ranks' ZeRO shards by DeepSpeed's own converter (no process
group needed), loaded into the base model's architecture and saved with its tokenizer or processor, so
vLLM and transformers load the result like any model directory. The weights are saved in fp32 by default,
or cast once at the end to bf16 / fp16 (half the size, what a GPU engine serves anyway).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from mpo.models.loading import load_model
from mpo.trainer.checkpoints import read_checkpoint

#: Files of a model directory that hold weights (written anew from the checkpoint), not settings.
_WEIGHT_FILES = (".safetensors", ".bin", ".pt", ".pth", ".index.json")


def _copy_settings(base: Path, out_dir: Path) -> None:
    """The base's tokenizer, processor, chat template, generation settings (and any remote code) exactly as
    they are: loading and saving a processor again would change nothing but can fail (Qwen2-VL's processor
    cannot be rebuilt through AutoProcessor without torchvision)."""
    for path in base.iterdir():
        if path.is_file() and path.name != "config.json" and not path.name.endswith(_WEIGHT_FILES):
            shutil.copy2(path, out_dir / path.name)


def export_checkpoint(
    checkpoint_dir: Path, out_dir: Path, *, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False
) -> Path:
    if not torch.cuda.is_available():  # DeepSpeed otherwise probes for a GPU accelerator at import
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    checkpoint = read_checkpoint(Path(checkpoint_dir))
    base = Path(checkpoint.meta["model"])
    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.path), tag=checkpoint.name)
    model = load_model(base, dtype=torch.float32, trust_remote_code=trust_remote_code)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{checkpoint.path} does not match {base}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.to(dtype).save_pretrained(out_dir, safe_serialization=True)  # config.json records the dtype
    _copy_settings(base, Path(out_dir))
    return Path(out_dir)
