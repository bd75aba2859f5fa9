"""Turns request prompts into engine inputs, and refuses what the model cannot take.

This is the model-aware half of validation (the generic half is `mpo/serving/validation.py`):
images on a text-only model, image URIs that are not readable files under the readable roots, and
prompts that do not fit the context with the requested `max_tokens` are refused here with
INVALID_ARGUMENT naming the field.

What is decoded where. The guard's validation opens `Image.data` bytes only as far as their header
(the pixel cap) and their structure (`verify`); nothing is decompressed there. `Image.uri` files are read
here (regular files only, at most `max_image_bytes`) and get the same checks. Each image is then decoded
in full once in the ingress, by `render` (the processor expands its image tokens: the token count
depends on it), and once more in the replica that samples it (the engine needs the pixels). Both decodes
are of images within `max_image_pixels`; `render` is synchronous, so the service runs it in a worker
thread, off the event loop.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from mpo.chat import ChatRenderer, open_images
from mpo.config import PromptConfig, RequestLimits
from mpo.serving.paths import inside, resolved_roots
from mpo.serving.validation import InvalidRequest, check_image_bytes, error_text
from mpo.v1 import common_pb2


@dataclass(frozen=True)
class EngineInput:
    prompt: str  # the chat-templated text, ending where the assistant's answer starts (or continues)
    prompt_token_ids: tuple[int, ...]
    images: tuple[bytes, ...] = ()  # encoded images, one per image placeholder in `prompt`
    # New tokens to sample before the answer may end: no end-of-turn token and no stop string ends it sooner
    # (vLLM's `min_tokens`; a Continuation's `min_total_tokens`). At most the spec's `max_tokens`.
    min_tokens: int = 0


def _not_readable(field: str, what: str) -> InvalidRequest:
    """One text for outside the roots, missing, of the wrong kind and unreadable: a caller cannot tell them
    apart, so it cannot probe which paths exist outside the roots."""
    return InvalidRequest(field, f"not a readable {what} under the readable roots")


def resolve_readable(uri: str, roots: Sequence[Path], field: str, *, directories: bool = True) -> Path:
    """`file:///abs/path` or a path, only inside one of `roots` (symlinks resolved first), naming a regular
    file, or a directory when `directories` is set."""
    what = "file or directory" if directories else "file"
    if not roots:
        raise InvalidRequest(field, "this service reads no files: no readable_roots are configured")
    try:
        path = Path(uri.removeprefix("file://")).resolve()
        kind_ok = path.is_file() or (directories and path.is_dir())
    except (OSError, ValueError) as exc:  # a NUL byte, a symlink loop, a name too long
        raise _not_readable(field, what) from exc
    if not (kind_ok and inside(path, resolved_roots(roots))):
        raise _not_readable(field, what)
    return path


def read_image_file(uri: str, roots: Sequence[Path], field: str, limits: RequestLimits) -> bytes:
    """The bytes of an image file under `roots`, checked like `Image.data`.

    The size comes from the open file (`fstat`), before reading, and at most `max_image_bytes` + 1 bytes
    are read: a file that grew meanwhile is refused, not read whole. Opening does not block (a FIFO
    swapped in after `resolve_readable` would wait for a writer forever) and only a regular file is read.
    """
    path = resolve_readable(uri, roots, field, directories=False)
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise _not_readable(field, "file") from exc
    with os.fdopen(descriptor, "rb") as file:
        status = os.fstat(file.fileno())
        if not stat.S_ISREG(status.st_mode):
            raise _not_readable(field, "file")
        if status.st_size > limits.max_image_bytes:
            raise InvalidRequest(
                field, f"file of {status.st_size} bytes, at most {limits.max_image_bytes} bytes (max_image_bytes)"
            )
        try:
            data = file.read(limits.max_image_bytes + 1)
        except OSError as exc:
            raise _not_readable(field, "file") from exc
    check_image_bytes(data, field, limits)
    return data


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
        limits: RequestLimits | None = None,
    ) -> None:
        self.chat_renderer = ChatRenderer(model_dir, prompt=prompt, trust_remote_code=trust_remote_code)
        self.image_text = self.chat_renderer.image_text
        self.tokenizer = self.chat_renderer.tokenizer
        self.max_model_len = max_model_len
        self.readable_roots = list(readable_roots)
        self.limits = limits or RequestLimits()
        self.model_name = Path(model_dir).name

    def _image_bytes(self, image: common_pb2.Image, field: str) -> bytes:
        if image.WhichOneof("source") == "data":
            return image.data  # checked by the guard's validation
        return read_image_file(image.uri, self.readable_roots, f"{field}.uri", self.limits)

    @staticmethod
    def _decode(images: Sequence[bytes], field: str) -> list[Image.Image]:
        """Each image decoded, or refused by name: `verify` passes a JPEG cut short after its header."""
        decoded = []
        for i, data in enumerate(images):
            try:
                decoded.extend(open_images([data]))
            except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, ... on broken files
                raise InvalidRequest(f"{field}.images[{i}]", f"undecodable image ({error_text(exc)})") from exc
        return decoded

    def model_inputs(self, text: str, images: Sequence[bytes], field: str = "prompt") -> dict[str, torch.Tensor]:
        """What the model's processor makes of one rendered text: `input_ids` (image tokens expanded) and,
        with images, every other input the model's forward takes; shared by rollout (token counts) and the
        trainer. Images the processor refuses (Qwen2-VL's smallest side and widest aspect) name
        `{field}.images`."""
        decoded = self._decode(images, field)
        try:
            encoded = self.chat_renderer.encode([text], decoded)
        except (ValueError, TypeError) as exc:
            if not decoded:
                raise
            raise InvalidRequest(f"{field}.images", f"the model's processor refused them ({error_text(exc)})") from exc
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
        """The engine input of one prompt, which must leave room for `max_tokens` new tokens within the
        context (`max_tokens` 0, unset: room for at least one)."""
        text, images = self.chat(prompt, field, prefix=prefix, with_images=with_images)
        token_ids = self.model_inputs(text, images, field)["input_ids"][0].tolist()
        if len(token_ids) + max(max_tokens, 1) > self.max_model_len:
            context = f"the model context of {self.max_model_len} tokens (max_model_len)"
            if max_tokens:
                problem = f"plus sampling.max_tokens {max_tokens} exceeds {context}"
            else:
                problem = f"leaves no room for an answer within {context}"
            raise InvalidRequest(field, f"prompt of {len(token_ids)} tokens {problem}")
        return EngineInput(prompt=text, prompt_token_ids=tuple(token_ids), images=tuple(images))
