"""Shared pieces of the rollout-service tests: tiny models, a local Ray, clients, reference decoding."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import grpc
import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoTokenizer

from mpo.chat import ChatRenderer
from mpo.models.tiny import TextModelSpec, VisionSpec
from mpo.v1 import common_pb2, rollout_pb2_grpc

CORPUS = [f"What is {a} + {b}? {a} + {b} = {a + b}. Final answer: {a + b}" for a in range(25) for b in range(25)] + [
    "I see a red circle and a blue square. Describe the image. How many shapes are there?"
] * 20
#: head_dim 32: the sizes vLLM's CPU attention takes (docs/design.md §5).
SMALL = TextModelSpec(vocab_size=400, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128)
VISION = VisionSpec(image_size=32, patch_size=8, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


def arith_prompt(question: str = "What is 12 + 7?", prompt_id: str = "p0") -> common_pb2.Prompt:
    return common_pb2.Prompt(id=prompt_id, question=question, task="arith", answer="19")


def png(colour: str) -> bytes:
    """A small solid-colour PNG: enough for the tiny vision tower to tell images apart."""
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def raw_stub(address: str) -> tuple[grpc.aio.Channel, rollout_pb2_grpc.RolloutServiceStub]:
    """A channel without the clients' retry policy, to observe a status exactly as the server sent it."""
    channel = grpc.aio.insecure_channel(address, options=[("grpc.enable_retries", 0)])
    return channel, rollout_pb2_grpc.RolloutServiceStub(channel)


def transformers_greedy(
    model_dir: Path, question: str, max_tokens: int, state: Mapping[str, torch.Tensor] | None = None
) -> list[int]:
    """Reference: greedy token ids from plain transformers on the same rendered prompt (and weights)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    if state is not None:
        model.load_state_dict(dict(state), strict=True)
    text = ChatRenderer(model_dir).prompt_text(question)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        output = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return output[0, ids["input_ids"].shape[1] :].tolist()


def perturbed_state(model_dir: Path, seed: int) -> dict[str, torch.Tensor]:
    """The model's weights (module names) with seeded noise: a stand-in for one trainer update."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    generator = torch.Generator().manual_seed(seed)
    return {
        name: tensor + 0.05 * torch.randn(tensor.shape, generator=generator)
        for name, tensor in model.state_dict().items()
    }
