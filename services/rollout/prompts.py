"""Turns request prompts into engine inputs, and refuses what the model cannot take.

This is the model-aware half of validation (the generic half is `services/common/validation.py`):
images on a text-only model, image URIs outside the readable roots, and prompts that do not fit the
context with the requested `max_tokens` are refused here with INVALID_ARGUMENT naming the field.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from mpo.chat import ChatRenderer, open_images
from mpo.config import PromptConfig
from mpo.services.common.validation import InvalidRequest
from mpo.services.rollout.engines.base import EngineInput
from mpo.v1 import common_pb2


def resolve_readable(uri: str, roots: Sequence[Path], field: str) -> Path:
    """`file:///abs/path` or a path, only inside one of `roots` (symlinks resolved first)."""
    raw = uri.removeprefix("file://")
    path = Path(raw).resolve()
    if not roots:
        raise InvalidRequest(field, "this service reads no files: no readable_roots are configured")
    if not any(path.is_relative_to(Path(root).resolve()) for root in roots):
        allowed = ", ".join(str(r) for r in roots)
        raise InvalidRequest(field, f"{uri!r} is outside the readable roots ({allowed})")
    if not path.exists():
        raise InvalidRequest(field, f"{uri!r} does not exist")
    return path


class PromptRenderer:
    """`ChatRenderer` for request prompts: images by bytes or readable URI, and the model's limits."""

    def __init__(
        self,
        model_dir: Path,
        *,
        max_model_len: int,
        readable_roots: Sequence[Path],
        prompt: PromptConfig | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        self.chat_renderer = ChatRenderer(model_dir, prompt=prompt, trust_remote_code=trust_remote_code)
        self.image_text = self.chat_renderer.image_text
        self.tokenizer = self.chat_renderer.tokenizer
        self.max_model_len = max_model_len
        self.readable_roots = list(readable_roots)
        self.model_name = Path(model_dir).name

    def _image_bytes(self, image: common_pb2.Image, field: str) -> bytes:
        if image.WhichOneof("source") == "data":
            return image.data
        path = resolve_readable(image.uri, self.readable_roots, f"{field}.uri")
        data = path.read_bytes()
        try:
            with Image.open(io.BytesIO(data)) as decoded:
                decoded.verify()
        except Exception as exc:  # PIL raises many types on bad files; any of them means "not an image"
            raise InvalidRequest(
                f"{field}.uri", f"{image.uri!r} is not a readable image ({type(exc).__name__})"
            ) from exc
        return data

    def model_inputs(self, text: str, images: Sequence[bytes]) -> dict[str, torch.Tensor]:
        """What the model's processor makes of one rendered text: `input_ids` (image tokens expanded) and,
        with images, every other input the model's forward takes; shared by rollout (token counts) and the
        trainer."""
        encoded = self.chat_renderer.encode([text], open_images(images))
        return {key: value for key, value in encoded.items() if key != "attention_mask"}

    def chat(
        self, prompt: common_pb2.Prompt, field: str, *, prefix: str = "", with_images: bool = True
    ) -> tuple[str, list[bytes]]:
        """The chat-template text (plus an assistant `prefix`) and the image bytes it refers to."""
        if prompt.images and with_images and not self.image_text:
            raise InvalidRequest(f"{field}.images", f"model {self.model_name!r} is text-only and takes no images")
        images = [self._image_bytes(image, f"{field}.images[{i}]") for i, image in enumerate(prompt.images)]
        images = images if with_images else []
        return self.chat_renderer.prompt_text(prompt.question, len(images), prefix=prefix), images

    def render(
        self, prompt: common_pb2.Prompt, field: str, *, max_tokens: int, prefix: str = "", with_images: bool = True
    ) -> EngineInput:
        text, images = self.chat(prompt, field, prefix=prefix, with_images=with_images)
        token_ids = self.model_inputs(text, images)["input_ids"][0].tolist()
        if len(token_ids) + max_tokens > self.max_model_len:
            raise InvalidRequest(
                field,
                f"prompt of {len(token_ids)} tokens plus sampling.max_tokens {max_tokens} exceeds the model "
                f"context of {self.max_model_len} tokens (max_model_len)",
            )
        return EngineInput(prompt=text, prompt_token_ids=tuple(token_ids), images=tuple(images))
