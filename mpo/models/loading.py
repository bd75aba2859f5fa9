"""What a model directory is and how every part of OnlineMPO loads it.

One place decides text vs image-text, the context length and the transformers classes, and passes
`trust_remote_code` (explicit, off by default) to every loader, so rollout, trainer, warm start,
evaluation and export always agree on how a user's model directory is read.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import (
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    PreTrainedTokenizerBase,
)
from transformers.processing_utils import ProcessorMixin
from transformers.utils import PROCESSOR_NAME, is_torchvision_available


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


#: Where image-text families keep their image encoder (LLaVA, LLaVA-NeXT, InternVL: `vision_tower`;
#: Qwen2-VL: `visual`), on the outer model or its inner `model`.
_VISION_TOWER_NAMES = ("vision_tower", "visual", "vision_model")


def vision_tower(model: torch.nn.Module) -> torch.nn.Module | None:
    """The model's image encoder, or None for a text model."""
    for holder in (getattr(model, "model", None), model):
        for name in _VISION_TOWER_NAMES:
            tower = getattr(holder, name, None)
            if isinstance(tower, torch.nn.Module):
                return tower
    return None


def load_processing(model_dir: Path, *, trust_remote_code: bool = False) -> tuple[Any | None, PreTrainedTokenizerBase]:
    """(processor, tokenizer): image-text models go through their processor (it expands image tokens and
    holds the chat template that places them); text models have only a tokenizer."""
    if is_image_text_model(model_dir):
        processor = load_processor(model_dir, trust_remote_code=trust_remote_code)
        return processor, processor.tokenizer
    return None, AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)


def _processor_class_name(model_dir: Path) -> str | None:
    """The processor class a directory names: its processor, image-processor or tokenizer settings (hub
    checkpoints write it in any of these)."""
    for name in (PROCESSOR_NAME, "preprocessor_config.json", "tokenizer_config.json"):
        path = Path(model_dir) / name
        if path.is_file() and (found := json.loads(path.read_text()).get("processor_class")):
            return str(found)
    return None


def without_video_processor(processor_class: type[ProcessorMixin], **parts: Any) -> ProcessorMixin:
    processor = processor_class.__new__(processor_class)

    def check(name: str, value: Any) -> Any:  # the one argument transformers cannot check without torchvision
        if name == "video_processor" and value is None:
            return None
        return ProcessorMixin.check_argument_for_proper_class(processor, name, value)

    processor.check_argument_for_proper_class = check  # this instance only, removed once constructed
    processor_class.__init__(processor, video_processor=None, **parts)
    del processor.check_argument_for_proper_class
    return processor


def load_processor(model_dir: Path, *, trust_remote_code: bool = False) -> ProcessorMixin:
    """`AutoProcessor.from_pretrained`, except where a processor wants a video processor and torchvision is
    missing (the CPU install): transformers 5 builds every video processor on torchvision and checks the
    argument even when it is None, so Qwen2-VL's and InternVL's processors could not load at all. They are
    then built from the family's own class with their image processor and tokenizer, and no video
    processor: images work, videos do not."""
    name = _processor_class_name(model_dir)
    processor_class = getattr(transformers, name, None) if name else None
    if (
        processor_class is None
        or is_torchvision_available()
        or "video_processor" not in processor_class.get_attributes()
    ):
        return AutoProcessor.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    settings, _ = processor_class.get_processor_dict(model_dir)
    accepted = inspect.signature(processor_class.__init__).parameters
    parts = processor_class.get_attributes()
    extra = {key: value for key, value in settings.items() if key in accepted and key not in parts}
    return without_video_processor(
        processor_class,
        image_processor=AutoImageProcessor.from_pretrained(model_dir, trust_remote_code=trust_remote_code),
        tokenizer=AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code),
        **extra,
    )
