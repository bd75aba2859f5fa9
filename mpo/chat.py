"""Prompt rendering, in one place: how a question (and its images) becomes a model's chat text and inputs.

Rollout, the trainer, the warm start and held-out evaluation all render through `ChatRenderer`, so the
prompt a sample was drawn from is byte for byte the prompt it is trained on. The rules, which real model
families need:

* Text models get string content. The chat templates of Qwen2.5, Llama 3, Mistral and Gemma concatenate
  `message['content']` as a string; a list of parts raises or prints its repr into the prompt.
* Image-text models render through their processor's template (which places the image tokens) with
  content parts, `{"type": "image"}` per image and one text part, as Hugging Face processors expect.
* The token that ends an assistant turn is what the template writes after an assistant's text, found by
  rendering a conversation — not `eos_token` (Llama 3 ends turns with `<|eot_id|>`, its tokenizer's EOS is
  `<|end_of_text|>`; Gemma ends them with `<end_of_turn>`).
* The system prompt and the instruction before the question come from `PromptConfig` (default: no system
  turn, the paper's chain-of-thought instruction). A template that cannot render the configured
  conversation is refused when the renderer is built, before any service starts.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import GenerationConfig

from mpo.config import PromptConfig
from mpo.data.prompting import user_text
from mpo.models.loading import load_processing

#: The assistant text of the probe conversation that finds the end-of-turn token.
_PROBE_ANSWER = "MPO-PROBE-ANSWER"


class TemplateError(ValueError):
    """A model directory whose chat template cannot render the conversations OnlineMPO sends."""


class ChatRenderer:
    """A model directory's chat template and processor, with the run's prompt settings."""

    def __init__(
        self, model_dir: Path | str, *, prompt: PromptConfig | None = None, trust_remote_code: bool = False
    ) -> None:
        self.model_dir = Path(model_dir)
        self.processor, self.tokenizer = load_processing(self.model_dir, trust_remote_code=trust_remote_code)
        self.image_text = self.processor is not None
        self.prompt = prompt or PromptConfig()
        self._templater = self.processor if self.image_text else self.tokenizer
        if not getattr(self._templater, "chat_template", None):
            kind = "processor" if self.image_text else "tokenizer"
            raise TemplateError(f"{self.model_dir}: the {kind} has no chat_template; OnlineMPO renders chat prompts")
        self.end_of_turn = self._find_end_of_turn()
        self.end_of_turn_id = int(self.tokenizer.convert_tokens_to_ids(self.end_of_turn))
        self.prompt_text("probe question", 1 if self.image_text else 0)  # the configured conversation renders

    # --- text ----------------------------------------------------------------------------------------------

    def _content(self, text: str, images: int = 0) -> str | list[dict[str, str]]:
        if not self.image_text:
            return text
        return [{"type": "image"} for _ in range(images)] + [{"type": "text", "text": text}]

    def messages(self, question: str, image_count: int = 0) -> list[dict[str, Any]]:
        """The conversation for one question: the system turn (if configured), then the user turn."""
        turns: list[dict[str, Any]] = []
        if self.prompt.system_prompt:
            turns.append({"role": "system", "content": self._content(self.prompt.system_prompt)})
        turns.append(
            {"role": "user", "content": self._content(user_text(question, self.prompt.instruction), image_count)}
        )
        return turns

    def _apply(self, turns: list[dict[str, Any]], *, generation_prompt: bool, what: str) -> str:
        try:
            return self._templater.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation_prompt)
        except Exception as exc:  # jinja raises its own errors and templates raise_exception() with any message
            hint = " (prompt.system_prompt)" if any(turn["role"] == "system" for turn in turns) else ""
            raise TemplateError(f"{self.model_dir}: the chat template cannot render {what}{hint}: {exc}") from exc

    def prompt_text(self, question: str, image_count: int = 0, *, prefix: str = "") -> str:
        """The rendered prompt up to the assistant's turn, plus an assistant `prefix` to continue from."""
        text = self._apply(self.messages(question, image_count), generation_prompt=True, what="a question")
        return text + prefix

    def _find_end_of_turn(self) -> str:
        """The special token the template writes right after an assistant's text."""
        turns = [
            {"role": "user", "content": self._content("probe question")},
            {"role": "assistant", "content": self._content(_PROBE_ANSWER)},
        ]
        rendered = self._apply(turns, generation_prompt=False, what="an assistant turn")
        if _PROBE_ANSWER not in rendered:
            raise TemplateError(f"{self.model_dir}: the chat template drops the assistant's text")
        tail = rendered[rendered.rindex(_PROBE_ANSWER) + len(_PROBE_ANSWER) :].lstrip()
        specials = {token.content for token in self.tokenizer.added_tokens_decoder.values() if token.special}
        specials |= {t for t in (self.tokenizer.eos_token, self.tokenizer.pad_token) if t}
        for token in sorted(specials, key=len, reverse=True):
            if tail.startswith(token):
                return token
        if self.tokenizer.eos_token:  # a template that closes turns with plain text: generation ends at EOS
            return self.tokenizer.eos_token
        raise TemplateError(f"{self.model_dir}: no token ends an assistant turn (the template writes {tail[:20]!r})")

    def response_ids(self, text: str, *, ended: bool = True) -> list[int]:
        """A response's tokens as the model writes them: the text, then the end-of-turn token unless the
        response is cut short (`ended` false: an unterminated pair's side)."""
        return self.tokenizer(text + (self.end_of_turn if ended else ""), add_special_tokens=False)["input_ids"]

    def stop_token_ids(self) -> list[int]:
        """Tokens that end generation: the end of turn, and the EOS ids of the tokenizer and generation config."""
        ids = [self.end_of_turn_id]
        if self.tokenizer.eos_token_id is not None:
            ids.append(int(self.tokenizer.eos_token_id))
        if (self.model_dir / "generation_config.json").is_file():
            configured = GenerationConfig.from_pretrained(self.model_dir).eos_token_id
            ids.extend([configured] if isinstance(configured, int) else configured or [])
        return list(dict.fromkeys(ids))

    # --- model inputs --------------------------------------------------------------------------------------

    def encode(
        self, texts: Sequence[str], images: Sequence[Image.Image] = (), *, padding: bool = False
    ) -> dict[str, torch.Tensor]:
        """Everything the processor makes of rendered texts (their images in order): `input_ids` with image
        tokens expanded, `attention_mask`, and whatever the model's forward needs besides (`pixel_values`,
        `image_grid_thw` for Qwen2-VL, `image_sizes` for LLaVA-NeXT, ...)."""
        if self.processor is not None and images:
            return dict(
                self.processor(
                    images=list(images),
                    text=list(texts),
                    return_tensors="pt",
                    padding=padding,
                    add_special_tokens=False,
                )
            )
        return dict(self.tokenizer(list(texts), return_tensors="pt", padding=padding, add_special_tokens=False))


def open_images(sources: Sequence[bytes | Path]) -> list[Image.Image]:
    """RGB images from encoded bytes or files, as every processor takes them."""
    opened = []
    for source in sources:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            opened.append(image.convert("RGB"))
    return opened
