"""`mpo/chat.py` on every model family: the prompt each service renders, the end of turn, the model inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mpo.chat import ChatRenderer, TemplateError, open_images
from mpo.config import PromptConfig
from mpo.data.prompting import COT_INSTRUCTION
from mpo.data.records import PromptRecord
from mpo.models.demonstrations import DemonstrationBatcher
from mpo.models.families import FAMILIES, build_family_model
from mpo.models.generate import TransformersGenerator
from mpo.models.loading import load_model
from mpo.models.logprobs import model_logprobs
from mpo.trainer.batching import PairEncoder, pair_batch
from mpo.v1 import common_pb2
from tests.rollout_helpers import png

QUESTION = "What is 2 + 3?"


@pytest.fixture(scope="module")
def families(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chat-families")
    return {name: build_family_model(name, root / name, seed=0) for name in FAMILIES}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_end_of_turn_is_what_the_template_writes_after_an_answer(families: dict[str, Path], name: str) -> None:
    renderer = ChatRenderer(families[name])
    assert renderer.end_of_turn == FAMILIES[name].end_of_turn
    assert renderer.end_of_turn_id in renderer.stop_token_ids()
    assert renderer.tokenizer.eos_token_id in renderer.stop_token_ids()
    assert renderer.response_ids("4")[-1] == renderer.end_of_turn_id
    if name == "llama3":  # the family where eos_token would have trained the wrong ending
        assert renderer.tokenizer.eos_token == "<|end_of_text|>" != renderer.end_of_turn


@pytest.mark.parametrize("name", sorted(n for n, f in FAMILIES.items() if not f.image_text))
def test_text_families_get_string_content_and_the_instruction(families: dict[str, Path], name: str) -> None:
    renderer = ChatRenderer(families[name])
    messages = renderer.messages(QUESTION)
    assert messages == [{"role": "user", "content": f"{COT_INSTRUCTION}\n\n{QUESTION}"}]
    text = renderer.prompt_text(QUESTION)
    assert f"{COT_INSTRUCTION}\n\n{QUESTION}" in text and "[{" not in text, "no list repr in the prompt"


@pytest.mark.parametrize("name", sorted(n for n, f in FAMILIES.items() if f.image_text))
def test_image_text_families_render_through_the_processor_with_every_model_input(
    families: dict[str, Path], name: str
) -> None:
    renderer = ChatRenderer(families[name])
    images = open_images([png("red")])
    encoded = renderer.encode([renderer.prompt_text(QUESTION, 1)], images)
    assert set(FAMILIES[name].processor_keys) <= set(encoded)
    without = renderer.encode([renderer.prompt_text(QUESTION, 0)])  # DropoutNTP's continuation: no image
    assert (
        set(without) == {"input_ids", "attention_mask"}
        and without["input_ids"].shape[1] < encoded["input_ids"].shape[1]
    )


def test_system_prompt_and_instruction_come_from_the_config(families: dict[str, Path]) -> None:
    prompt = PromptConfig(system_prompt="Answer briefly.", instruction="")
    text = ChatRenderer(families["llama3"], prompt=prompt).prompt_text("What is 2 + 3? Answer with a number.")
    assert "Answer briefly." in text and "What is 2 + 3? Answer with a number." in text and "Final answer" not in text
    gemma = ChatRenderer(families["gemma"], prompt=prompt).prompt_text(QUESTION)
    assert gemma.count("<start_of_turn>user") == 1 and "Answer briefly." in gemma, "Gemma folds it into the user turn"


def test_a_template_that_cannot_render_a_system_turn_is_refused_when_the_renderer_is_built(
    families: dict[str, Path], tmp_path: Path
) -> None:
    """Gemma 2's template raises on a system message; such a model with a configured system prompt is an
    error before anything starts, naming the setting."""
    model = shutil.copytree(families["qwen2.5"], tmp_path / "no-system")
    config_path = model / "tokenizer_config.json"
    settings = json.loads(config_path.read_text())
    strict = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    template_file = model / "chat_template.jinja"
    if template_file.exists():
        template_file.write_text(strict + template_file.read_text())
    else:
        settings["chat_template"] = strict + settings["chat_template"]
        config_path.write_text(json.dumps(settings))
    ChatRenderer(model)  # without a system prompt it renders
    refusal = r"cannot render a question \(prompt.system_prompt\): System role not supported"
    with pytest.raises(TemplateError, match=refusal):
        ChatRenderer(model, prompt=PromptConfig(system_prompt="Be terse."))


def test_a_model_without_a_chat_template_is_refused(families: dict[str, Path], tmp_path: Path) -> None:
    model = shutil.copytree(families["qwen2.5"], tmp_path / "no-template")
    (model / "chat_template.jinja").unlink(missing_ok=True)
    settings = json.loads((model / "tokenizer_config.json").read_text())
    settings.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(settings))
    with pytest.raises(TemplateError, match="has no chat_template"):
        ChatRenderer(model)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_rollout_trainer_and_warm_start_render_the_same_prompt(
    families: dict[str, Path], name: str, tmp_path: Path
) -> None:
    """The trainer's pair encoding and the warm start's demonstrations start with the exact tokens the
    rollout service samples from, end with the family's end of turn, and the forward takes every input."""
    model = families[name]
    image_text = FAMILIES[name].image_text
    prompt = common_pb2.Prompt(id="p", question=QUESTION, task="arith", answer="5")
    record_images = []
    if image_text:
        prompt.images.add(data=png("blue"))
        (tmp_path / "blue.png").write_bytes(png("blue"))
        record_images = [tmp_path / "blue.png"]
    encoder = PairEncoder(model, max_length=1024, readable_roots=[])
    pair = encoder.encode(
        common_pb2.PreferencePair(id="x", prompt=prompt, chosen="5. Final answer: 5", rejected="6"), "p"
    )
    rendered = encoder.renderer.render(prompt, "prompts[0]", max_tokens=8)
    assert pair.prompt_ids.tolist() == list(rendered.prompt_token_ids)
    assert pair.chosen_ids[-1].item() == pair.rejected_ids[-1].item() == encoder.renderer.chat_renderer.end_of_turn_id
    generator = TransformersGenerator(model)
    record = PromptRecord(id="p", question=QUESTION, images=record_images, answer="5", task="arith")
    demo = DemonstrationBatcher(generator).batch([(record, "5. Final answer: 5")])
    assert demo["input_ids"][0, : len(pair.prompt_ids)].tolist() == pair.prompt_ids.tolist()
    logps = model_logprobs(generator.model, pair_batch([pair, pair], encoder.tokenizer.pad_token_id or 0), 4)
    assert torch.isfinite(logps.summed).all() and logps.token_counts.tolist()[0] == len(pair.chosen_ids)


REMOTE_CODE = """
from transformers import Qwen2Config, Qwen2ForCausalLM


class ShippedConfig(Qwen2Config):
    model_type = "mpo_shipped_qwen2"


class ShippedModel(Qwen2ForCausalLM):
    config_class = ShippedConfig
"""


def test_remote_code_runs_only_when_trust_remote_code_says_so(families: dict[str, Path], tmp_path: Path) -> None:
    """A checkpoint that ships its own modelling code (as the original InternVL releases do) loads only with
    the explicit flag, which every loader passes on."""
    model = shutil.copytree(families["qwen2.5"], tmp_path / "shipped")
    (model / "modeling_shipped.py").write_text(REMOTE_CODE)
    config = json.loads((model / "config.json").read_text())
    config |= {
        "model_type": "mpo_shipped_qwen2",
        "architectures": ["ShippedModel"],
        "auto_map": {
            "AutoConfig": "modeling_shipped.ShippedConfig",
            "AutoModelForCausalLM": "modeling_shipped.ShippedModel",
        },
    }
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_model(model)
    loaded = load_model(model, trust_remote_code=True)
    assert type(loaded).__name__ == "ShippedModel"
    generator = TransformersGenerator(model, trust_remote_code=True)
    assert type(generator.model).__name__ == "ShippedModel" and generator.renderer.end_of_turn == "<|im_end|>"
