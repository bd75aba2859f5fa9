"""The tiny-model factory: deterministic files, and the models load and generate in vLLM and transformers."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

from mpo.models.tiny import EOT, IMAGE, TextModelSpec, VisionSpec, build_image_text_model, build_text_model

CORPUS = [f"What is {a} + {b}? {a} + {b} = {a + b}. Final answer: {a + b}" for a in range(25) for b in range(25)] + [
    "I see a red circle and a blue square. Describe the image."
] * 20
SMALL = TextModelSpec(vocab_size=400, hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128)
VISION = VisionSpec(image_size=32, patch_size=8, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
PROMPT = [{"role": "user", "content": "What is 3 + 4?"}]


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def text_model(tmp_path_factory) -> Path:
    return build_text_model(tmp_path_factory.mktemp("text"), CORPUS, SMALL, seed=0)


@pytest.fixture(scope="module")
def image_text_model(tmp_path_factory) -> Path:
    return build_image_text_model(tmp_path_factory.mktemp("vl"), CORPUS, SMALL, VISION, seed=0)


def test_same_seed_gives_byte_identical_files(tmp_path: Path, text_model: Path, image_text_model: Path) -> None:
    again_text = build_text_model(tmp_path / "text", CORPUS, SMALL, seed=0)
    again_vl = build_image_text_model(tmp_path / "vl", CORPUS, SMALL, VISION, seed=0)
    assert digests(again_text) == digests(text_model)
    assert digests(again_vl) == digests(image_text_model)
    assert "model.safetensors" in digests(text_model)
    other_seed = build_text_model(tmp_path / "seed1", CORPUS, SMALL, seed=1)
    assert digests(other_seed)["model.safetensors"] != digests(text_model)["model.safetensors"]


def test_tokenizer_splits_digits_and_ends_turns_with_eos(text_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(text_model)
    assert tokenizer.eos_token == EOT
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("12345", add_special_tokens=False)["input_ids"])
    assert pieces == ["1", "2", "3", "4", "5"]
    rendered = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|im_start|>user\nWhat is 3 + 4?<|im_end|>\n<|im_start|>assistant\n"


def _transformers_greedy(model_dir: Path, max_new_tokens: int = 12) -> list[int]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=None)
    return output[0, ids["input_ids"].shape[1] :].tolist()


def test_text_model_generates_in_transformers(text_model: Path) -> None:
    tokens = _transformers_greedy(text_model)
    assert len(tokens) == 12
    assert tokens == _transformers_greedy(text_model), "greedy decoding must be deterministic"


VLLM_SCRIPT = """
import json, sys
from transformers import AutoTokenizer
from vllm import LLM, SamplingParams
if __name__ == "__main__":
    model = sys.argv[1]
    prompt = AutoTokenizer.from_pretrained(model).apply_chat_template(
        json.loads(sys.argv[2]), tokenize=False, add_generation_prompt=True)
    llm = LLM(model=model, dtype="float32", kv_cache_memory_bytes=32 * 2**20, max_model_len=256, seed=0)
    greedy = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    sampled = llm.generate([prompt], SamplingParams(temperature=1.0, n=4, max_tokens=12, seed=0))
    print("RESULT " + json.dumps({"greedy": list(greedy[0].outputs[0].token_ids),
                                   "sampled": [list(o.token_ids) for o in sampled[0].outputs]}))
"""


@pytest.mark.slow
def test_text_model_generates_in_vllm_cpu_like_transformers(text_model: Path, tmp_path: Path) -> None:
    script = tmp_path / "vllm_generate.py"
    script.write_text(VLLM_SCRIPT)
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    result = subprocess.run(
        [sys.executable, str(script), str(text_model), json.dumps(PROMPT)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT "))
    report = json.loads(line.removeprefix("RESULT "))
    assert report["greedy"] == _transformers_greedy(text_model), "vLLM and transformers disagree on the same weights"
    assert len(report["sampled"]) == 4 and all(report["sampled"])


def test_image_text_model_generates_from_an_image(image_text_model: Path) -> None:
    processor = AutoProcessor.from_pretrained(image_text_model)
    model = AutoModelForImageTextToText.from_pretrained(image_text_model)
    assert type(processor.image_processor).__name__ == "CLIPImageProcessorPil"  # no torchvision needed
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert IMAGE in text

    def run(colour: str) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = processor(images=Image.new("RGB", (32, 32), colour), text=text, return_tensors="pt")
        image_tokens = (inputs["input_ids"] == model.config.image_token_id).sum().item()
        assert image_tokens == VISION.image_tokens
        with torch.no_grad():
            logits = model(**inputs).logits[0, -1]
        output = model.generate(**inputs, max_new_tokens=6, do_sample=False, eos_token_id=None)
        return logits, output[0, inputs["input_ids"].shape[1] :]

    red_logits, red_tokens = run("red")
    blue_logits, _ = run("blue")
    assert len(red_tokens) == 6
    assert not torch.allclose(red_logits, blue_logits), "the image must condition the output"


def test_head_dim_rule_for_vllm_cpu() -> None:
    with pytest.raises(ValueError, match="32 or 64"):
        TextModelSpec(hidden_size=96, num_heads=2)
