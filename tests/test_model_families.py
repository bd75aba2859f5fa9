"""Tiny random-weight models of real families: each loads through the Auto classes as its family's own classes,
its chat template renders as the public one does, image inputs reach the model, and builds are reproducible."""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    GenerationConfig,
)
from transformers.utils import is_torchvision_available

from mpo.config import RolloutConfig
from mpo.data.tasks import TASKS
from mpo.models.families import FAMILIES, build_family_model
from mpo.models.loading import load_processor, vision_tower
from mpo.prompts import PromptRenderer
from mpo.services.controller.loop import to_prompt
from mpo.services.rollout.engines import create_engine
from mpo.services.rollout.engines.base import SamplingSpec

#: family → (config class, model class, processor class) as transformers names them
CLASSES = {
    "qwen2.5": ("Qwen2Config", "Qwen2ForCausalLM", None),
    "llama3": ("LlamaConfig", "LlamaForCausalLM", None),
    "gemma": ("Gemma3TextConfig", "Gemma3ForCausalLM", None),
    "qwen2-vl": ("Qwen2VLConfig", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor"),
    "llava-next": ("LlavaNextConfig", "LlavaNextForConditionalGeneration", "LlavaNextProcessor"),
    "internvl": ("InternVLConfig", "InternVLForConditionalGeneration", "InternVLProcessor"),
    "llava": ("LlavaConfig", "LlavaForConditionalGeneration", "LlavaProcessor"),
}
TEXT_FAMILIES = [name for name, family in FAMILIES.items() if not family.image_text]
IMAGE_TEXT_FAMILIES = [name for name, family in FAMILIES.items() if family.image_text]

QUESTION, ANSWER, SYSTEM = "What is 3 + 4?", "It is 7.", "Be brief."
CONVERSATION = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]
CHATML = f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n{ANSWER}<|im_end|>\n"
LLAMA3_SYSTEM = (
    "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
)
LLAMA3_TURNS = (
    f"<|start_header_id|>user<|end_header_id|>\n\n{QUESTION}<|eot_id|>"
    f"<|start_header_id|>assistant<|end_header_id|>\n\n{ANSWER}<|eot_id|>"
)
#: family → (CONVERSATION rendered, [system] + CONVERSATION rendered): what the public templates write
RENDERED = {
    "qwen2.5": (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n" + CHATML,
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n" + CHATML,
    ),
    "llama3": (
        f"<|begin_of_text|>{LLAMA3_SYSTEM}<|eot_id|>{LLAMA3_TURNS}",
        f"<|begin_of_text|>{LLAMA3_SYSTEM}{SYSTEM}<|eot_id|>{LLAMA3_TURNS}",
    ),
    "gemma": (  # no system role: the system text opens the first user turn
        f"<bos><start_of_turn>user\n{QUESTION}<end_of_turn>\n<start_of_turn>model\n{ANSWER}<end_of_turn>\n",
        f"<bos><start_of_turn>user\n{SYSTEM}\n\n{QUESTION}<end_of_turn>\n<start_of_turn>model\n{ANSWER}<end_of_turn>\n",
    ),
    "qwen2-vl": (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n" + CHATML,
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n" + CHATML,
    ),
    "llava-next": (
        f"[INST] {QUESTION} [/INST] {ANSWER}</s> ",
        f"<<SYS>>\n{SYSTEM}\n<</SYS>>\n\n[INST] {QUESTION} [/INST] {ANSWER}</s> ",
    ),
    "internvl": (CHATML, f"<|im_start|>system\n{SYSTEM}<|im_end|>\n" + CHATML),
    "llava": (CHATML, f"<|im_start|>system\n{SYSTEM}<|im_end|>\n" + CHATML),
}
USER_TURN = {"llama3": "<|start_header_id|>user", "gemma": "<start_of_turn>user", "llava-next": "[INST]"}
#: what each template writes for one image
IMAGE_MARKERS = {
    "qwen2-vl": "<|vision_start|><|image_pad|><|vision_end|>",
    "llava-next": "<image>\n",
    "internvl": "<IMG_CONTEXT>\n",
    "llava": "<image>",
}
IMAGE_MESSAGE = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]


def digests(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every family, built once with the default corpus and seed."""
    root = tmp_path_factory.mktemp("families")
    return {name: build_family_model(name, root / name) for name in FAMILIES}


def load_model(name: str, directory: Path) -> torch.nn.Module:
    auto = AutoModelForImageTextToText if FAMILIES[name].image_text else AutoModelForCausalLM
    return auto.from_pretrained(directory).eval()


def test_every_family_has_an_entry_here() -> None:
    assert set(FAMILIES) == set(CLASSES) == set(RENDERED)
    assert [name for name in FAMILIES if FAMILIES[name].vllm_cpu] == TEXT_FAMILIES  # measured: see the module


def test_unknown_family_is_rejected_naming_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown model family 'mistral'.*'gemma'.*'qwen2-vl'"):
        build_family_model("mistral", tmp_path / "m")
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("name", list(FAMILIES))
def test_loads_as_the_familys_own_classes(name: str, built: dict[str, Path]) -> None:
    config_class, model_class, processor_class = CLASSES[name]
    family, directory = FAMILIES[name], built[name]
    assert type(AutoConfig.from_pretrained(directory)).__name__ == config_class
    model = load_model(name, directory)
    assert type(model).__name__ == model_class
    tokenizer = AutoTokenizer.from_pretrained(directory)
    text_config = model.config.get_text_config()
    assert text_config.vocab_size == len(tokenizer)
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    assert head_dim in (32, 64)  # what vLLM takes on CPU
    assert sum(p.numel() for p in model.parameters()) < 300_000
    assert not model.config.tie_word_embeddings
    tower = vision_tower(model)  # what the warm start's and the trainer's vision-tower options act on
    assert (tower is not None) == family.image_text
    if tower is not None:
        assert 0 < sum(p.numel() for p in tower.parameters()) < sum(p.numel() for p in model.parameters())
    assert model.get_input_embeddings().weight.data_ptr() != model.get_output_embeddings().weight.data_ptr()
    record = json.loads((directory / "mpo_model.json").read_text())
    assert record == {"kind": "image-text" if family.image_text else "text", "family": name, "seed": 0}
    eos_ids = GenerationConfig.from_pretrained(directory).eos_token_id
    eos_ids = eos_ids if isinstance(eos_ids, list) else [eos_ids]
    assert tokenizer.convert_tokens_to_ids(family.end_of_turn) in eos_ids
    assert tokenizer.eos_token_id in eos_ids
    if processor_class:
        processor = load_processor(directory)
        assert type(processor).__name__ == processor_class
        assert type(processor.image_processor).__name__.endswith("Pil")  # no torchvision


def test_video_capable_processors_are_built_without_torchvision(built: dict[str, Path]) -> None:
    """Qwen2-VL's and InternVL's processors also take a video processor, which needs torchvision: AutoProcessor
    cannot load them here, `load_processor` builds them without one, and images still work."""
    for name in ("qwen2-vl", "internvl"):
        if is_torchvision_available():
            assert type(AutoProcessor.from_pretrained(built[name])).__name__ == CLASSES[name][2]
        else:
            with pytest.raises((ImportError, ValueError), match=r"(?i)torchvision"):
                AutoProcessor.from_pretrained(built[name])
        processor = load_processor(built[name])
        assert type(processor).__name__ == CLASSES[name][2]
        assert processor.video_processor is None or is_torchvision_available()
    for name in ("llava-next", "llava"):  # no video half: the ordinary loader
        assert type(AutoProcessor.from_pretrained(built[name])).__name__ == CLASSES[name][2]


@pytest.mark.parametrize("name", list(FAMILIES))
def test_chat_template_renders_string_turns_and_ends_them_with_end_of_turn(name: str, built: dict[str, Path]) -> None:
    family = FAMILIES[name]
    tokenizer = AutoTokenizer.from_pretrained(built[name])
    rendered = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert rendered == RENDERED[name][0]
    assert rendered.index(ANSWER + family.end_of_turn) >= 0
    # in tokens: the end-of-turn marker is one special token, right after the assistant's text
    ids = tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)["input_ids"]
    end_id = tokenizer.convert_tokens_to_ids(family.end_of_turn)
    ends = [i for i, token in enumerate(ids) if token == end_id]
    assert ends and tokenizer.decode(ids[: ends[-1]]).endswith(ANSWER)
    if name == "llama3":  # the base tokenizer's EOS is not the instruct turn end
        assert tokenizer.eos_token == "<|end_of_text|>" != family.end_of_turn
    if family.image_text:  # the processor carries the same template
        assert load_processor(built[name]).apply_chat_template(CONVERSATION, tokenize=False) == rendered


@pytest.mark.parametrize("name", list(FAMILIES))
def test_system_message_is_handled_as_the_familys_template_does(name: str, built: dict[str, Path]) -> None:
    tokenizer = AutoTokenizer.from_pretrained(built[name])
    rendered = tokenizer.apply_chat_template([{"role": "system", "content": SYSTEM}, *CONVERSATION], tokenize=False)
    assert rendered == RENDERED[name][1]
    # with a system role the system text comes before the user's turn opens; without one (Gemma) inside it
    opener = USER_TURN.get(name, "<|im_start|>user")
    assert (rendered.index(SYSTEM) < rendered.index(opener)) is FAMILIES[name].system_role


def image_inputs(processor, colour: str) -> dict[str, torch.Tensor]:
    text = processor.apply_chat_template(IMAGE_MESSAGE, add_generation_prompt=True)
    # a wide image: Qwen2-VL resizes it to 112×56 (8 tokens), LLaVA-NeXT and InternVL tile it
    return processor(images=Image.new("RGB", (112, 56), colour), text=text, return_tensors="pt")


@pytest.mark.parametrize("name", IMAGE_TEXT_FAMILIES)
def test_processor_outputs_drive_a_forward_and_backward(name: str, built: dict[str, Path]) -> None:
    family = FAMILIES[name]
    processor = load_processor(built[name])
    assert IMAGE_MARKERS[name] in processor.apply_chat_template(IMAGE_MESSAGE, add_generation_prompt=True)
    inputs = image_inputs(processor, "red")
    assert set(inputs) == {"input_ids", "attention_mask", *family.processor_keys}
    model = load_model(name, built[name])
    # as many image tokens in the text as the vision tower yields features
    accepted = inspect.signature(model.get_image_features).parameters
    features = model.get_image_features(**{k: v for k, v in inputs.items() if k in accepted}).pooler_output
    features = features if isinstance(features, (list, tuple)) else [features]
    feature_count = sum(f.reshape(-1, f.shape[-1]).shape[0] for f in features)
    image_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    assert image_tokens == feature_count > 1
    output = model(**inputs, labels=inputs["input_ids"])
    assert output.logits.shape == (*inputs["input_ids"].shape, model.config.get_text_config().vocab_size)
    output.loss.backward()
    vision_grads = [p.grad for n, p in model.named_parameters() if "vision" in n or "visual" in n]
    assert any(g is not None and g.abs().sum() > 0 for g in vision_grads), "the loss must reach the vision tower"
    with torch.no_grad():
        blue = model(**image_inputs(processor, "blue")).logits
    assert not torch.allclose(output.logits.detach(), blue), "the image must condition the output"


@pytest.mark.parametrize("name", list(FAMILIES))
def test_generate_runs_a_few_tokens(name: str, built: dict[str, Path]) -> None:
    model = load_model(name, built[name])
    if FAMILIES[name].image_text:
        inputs = image_inputs(load_processor(built[name]), "green")
    else:
        tokenizer = AutoTokenizer.from_pretrained(built[name])
        inputs = tokenizer.apply_chat_template(
            CONVERSATION[:1], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
    output = model.generate(**inputs, max_new_tokens=4, do_sample=False, eos_token_id=None)
    assert output.shape == (1, inputs["input_ids"].shape[1] + 4)


@pytest.mark.parametrize("name", list(FAMILIES))
async def test_rollout_engine_samples_the_same_with_a_static_kv_cache(
    name: str, built: dict[str, Path], tmp_path: Path
) -> None:
    """`rollout.transformers_kv_cache: static` on every family: the transformers engine draws the same
    tokens as with the default dynamic cache (same seed; prompts of two lengths, so rows are left-padded)."""
    image_text = FAMILIES[name].image_text
    prompts = [to_prompt(r) for r in TASKS["shapes"].generate(2, 3, tmp_path)]
    spec = SamplingSpec(n=2, temperature=1.0, top_k=50, max_tokens=8, seed=5)
    drawn = {}
    for cache in ("dynamic", "static"):
        engine = create_engine(RolloutConfig(model=built[name], backend="transformers", transformers_kv_cache=cache))
        renderer = PromptRenderer(built[name], max_model_len=engine.description.max_model_len, readable_roots=[])
        inputs = [renderer.render(p, "p", max_tokens=8, with_images=image_text) for p in prompts]
        assert len({len(i.prompt_token_ids) for i in inputs}) == 2
        drawn[cache] = [c.token_ids for row in await engine.generate(inputs, spec) for c in row]
    assert drawn["static"] == drawn["dynamic"] and len(drawn["static"]) == 4


def test_same_seed_gives_identical_files(built: dict[str, Path], tmp_path: Path) -> None:
    for name in FAMILIES:
        assert digests(build_family_model(name, tmp_path / name)) == digests(built[name]), name
    reseeded = digests(build_family_model("qwen2-vl", tmp_path / "seed1", seed=1))
    assert reseeded["model.safetensors"] != digests(built["qwen2-vl"])["model.safetensors"]
    assert reseeded["tokenizer.json"] == digests(built["qwen2-vl"])["tokenizer.json"]
