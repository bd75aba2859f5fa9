"""Tiny random-weight models of real model families, built locally from each family's own classes.

Users bring real Hugging Face model directories; to test against each family without the hub, this builds a
tiny random-weight stand-in (as TRL's and vLLM's "tiny-random" test models are) from the family's own
transformers config, model and processor classes, with the family's chat template written from the public one
(its text and image branches; tool-calling branches are left out) and the family's real special tokens as
added special tokens of a byte-level BPE trained on our corpus. Where the real tokenizer adds a BOS on encode
(Llama 3, Gemma, Mistral), this one does too.

`vllm_cpu` as measured with vLLM 0.32.0 (CPU build) and transformers 5.19 on the directories built here:
`LLM(model=dir, dtype="float32", enforce_eager=True, max_model_len=256, kv_cache_memory_bytes=16 MiB)` in a
`__main__`-guarded script with VLLM_ENABLE_V1_MULTIPROCESSING=0, 24 greedy tokens (ignore_eos) from the token
ids of a templated chat prompt, against transformers' greedy `generate` on the same ids:
- qwen2.5, llama3 (with the llama3 RoPE scaling), gemma (Gemma 3, untied, a 32-token sliding window that the
  29 + 24 tokens cross): load in 20-55 s each and match token for token.
- Gemma 2 was tried first and is not the family here: vLLM's Gemma2ForCausalLM only loads tied embeddings
  ("ValueError: There is no module or parameter named 'lm_head' in Gemma2ForCausalLM"); tied, it matched.
- Image-text families (llava, qwen2-vl tried) do not load: "Model architectures
  ['LlavaForConditionalGeneration'] failed to be inspected", from "ModuleNotFoundError: No module named
  'torchvision'" in vLLM's model registry; the CPU install removes torchvision.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import processors
from transformers import (
    CLIPVisionConfig,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GenerationConfig,
    GotOcr2ImageProcessorPil,
    InternVLConfig,
    InternVLForConditionalGeneration,
    InternVLProcessor,
    InternVLVisionConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    MistralConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
    Qwen2VLTextConfig,
)
from transformers.processing_utils import ProcessorMixin
from transformers.utils import PROCESSOR_NAME

from mpo.models.loading import without_video_processor
from mpo.models.tiny import TextModelSpec, VisionSpec, build_image_text_model, train_bpe


@dataclass(frozen=True)
class Family:
    """What a test needs to know about a family without reading its files."""

    name: str
    image_text: bool
    vllm_cpu: bool  # whether the vLLM CPU build here runs it and agrees with transformers (measured)
    end_of_turn: str  # the token the template writes after an assistant turn
    processor_keys: tuple[str, ...]  # model inputs the processor returns besides input_ids / attention_mask
    system_role: bool  # whether the template accepts a system message as a turn of its own


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family("qwen2.5", False, True, "<|im_end|>", (), True),
        Family("llama3", False, True, "<|eot_id|>", (), True),
        Family("gemma", False, True, "<end_of_turn>", (), False),
        Family("qwen2-vl", True, False, "<|im_end|>", ("pixel_values", "image_grid_thw", "mm_token_type_ids"), True),
        Family("llava-next", True, False, "</s>", ("pixel_values", "image_sizes"), True),
        Family("internvl", True, False, "<|im_end|>", ("pixel_values",), True),
        Family("llava", True, False, "<|im_end|>", ("pixel_values",), True),
    )
}

VOCAB_SIZE = 512
#: head_dim 32 (vLLM on CPU takes 32 or 64); a few hundred thousand parameters with the vocabulary above.
TEXT_SIZE: dict[str, int] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "max_position_embeddings": 512,
}
HEAD_DIM = TEXT_SIZE["hidden_size"] // TEXT_SIZE["num_attention_heads"]

# --- chat templates, written from each family's public template (text turns; images where the family has them)

QWEN25_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\n" + QWEN25_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role in ['user', 'assistant'] or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role != 'system' %}"
    "{{- raise_exception('tiny qwen2.5 template: only system, user and assistant turns') }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

#: Llama 3.1 / 3.2 instruct: the system header always comes first, with the knowledge and today dates.
LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if not date_string is defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] | trim %}{%- set messages = messages[1:] %}"
    "{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\n' }}"
    "{{- 'Today Date: ' + date_string + '\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- for message in messages %}"
    "{%- if message['role'] in ['user', 'assistant'] %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{%- else %}{{- raise_exception('tiny llama3 template: only system, user and assistant turns') }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

#: Gemma 3: no system role; a system message is folded into the first user turn. Roles must alternate.
GEMMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}"
    "{%- else -%}{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}{%- endif -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}{%- else -%}{%- set role = message['role'] -%}"
    "{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}{%- for item in message['content'] -%}{%- if item['type'] == 'text' -%}{{ item['text'] | trim }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<end_of_turn>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\\n' }}{%- endif -%}"
)

#: Qwen2-VL instruct: ChatML with a default system turn; each image is <|vision_start|><|image_pad|><|vision_end|>.
QWEN2_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: LLaVA-NeXT (Mistral 7B v1.6): [INST] images first, then text [/INST]; an assistant turn ends with </s>.
LLAVA_NEXT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set parts = [{'type': 'text', 'text': message['content']}] %}"
    "{% else %}{% set parts = message['content'] %}{% endif %}"
    "{% if message['role'] == 'system' %}{{ '<<SYS>>\\n' + parts[0]['text'] + '\\n<</SYS>>\\n\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% for content in parts | selectattr('type', 'equalto', 'image') %}{{ '<image>\\n' }}{% endfor %}"
    "{% for content in parts | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{{ ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + parts[0]['text'] + '</s> ' }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
    "{% endfor %}"
)

#: InternVL3 as converted for transformers: plain ChatML, each image a <IMG_CONTEXT> the processor expands.
INTERNVL_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}{{ '<IMG_CONTEXT>\\n' }}"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def default_corpus() -> list[str]:
    """A small slice of the built-in tasks' texts: enough merges for a few-hundred-token vocabulary."""
    from mpo.models.corpus import task_corpus

    return task_corpus(["arith", "shapes"], per_task=100)


def build_family_model(family: str, out_dir: Path, corpus: list[str] | None = None, *, seed: int = 0) -> Path:
    """Write a tiny random-weight model of `family` to `out_dir` as an ordinary HF model directory.

    Same family, corpus and seed ⇒ byte-identical files."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; known families are {sorted(FAMILIES)}")
    corpus = default_corpus() if corpus is None else corpus
    out_dir.mkdir(parents=True, exist_ok=True)
    _BUILDERS[family](out_dir, corpus, seed)
    kind = "image-text" if FAMILIES[family].image_text else "text"
    record = {"kind": kind, "family": family, "seed": seed}
    (out_dir / "mpo_model.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return out_dir


# --- shared pieces


def _tokenizer(
    corpus: list[str],
    specials: list[str],
    template: str,
    *,
    eos: str,
    pad: str | None,
    bos: str | None = None,
    named: dict[str, str] | None = None,
) -> PreTrainedTokenizerFast:
    """BPE on the corpus with the family's special tokens (first ids, in the order given); `named` are the
    model-specific ones a processor looks up by attribute (InternVL's `context_image_token`...).

    With a `bos`, every encode starts with it, as the real tokenizers that have one do (a template that writes
    bos_token is tokenized by apply_chat_template without special tokens)."""
    backend = train_bpe(corpus, VOCAB_SIZE, specials)
    if bos is not None:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, backend.token_to_id(bos))]
        )
    named = named or {}
    others = [token for token in specials if token not in {eos, pad, bos, *named.values()}]
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=eos,
        pad_token=pad,
        bos_token=bos,
        additional_special_tokens=others,
        extra_special_tokens=named,
        chat_template=template,
        model_max_length=TEXT_SIZE["max_position_embeddings"],
    )


def _ids(tokenizer: PreTrainedTokenizerFast, *tokens: str) -> list[int]:
    return tokenizer.convert_tokens_to_ids(list(tokens))


def _special_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
    return {
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _save(
    out_dir: Path,
    model_class: Callable[[Any], PreTrainedModel],
    config: Any,
    seed: int,
    eos_ids: list[int],
    tokenizer: PreTrainedTokenizerFast,
    processor: ProcessorMixin | None = None,
) -> None:
    torch.manual_seed(seed)
    model = model_class(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_ids, pad_token_id=tokenizer.pad_token_id
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    if processor is None:
        tokenizer.save_pretrained(out_dir)
    elif "video_processor" in processor.get_attributes() and processor.video_processor is None:
        _save_without_video(processor, out_dir)
    else:
        processor.save_pretrained(out_dir)


# --- processors whose video half needs torchvision
#
# In transformers 5 every video processor needs torchvision, and Qwen2-VL's and InternVL's processors take one:
# their constructor checks it against a class that only exists with torchvision, and AutoProcessor loads it
# eagerly. Without torchvision neither processor can be built or loaded, though images need none of it. These
# build the family's own processor class with no video processor (images work, videos do not) and save it in
# the ordinary layout, so the same directory loads through AutoProcessor wherever torchvision is installed.


def _save_without_video(processor: ProcessorMixin, out_dir: Path) -> None:
    """The layout of the hub's Qwen2-VL / InternVL checkpoints: tokenizer, `preprocessor_config.json` (which the
    video processor also reads its settings from) and the processor's own settings in `processor_config.json`."""
    processor.tokenizer._set_processor_class(type(processor).__name__)
    processor.tokenizer.save_pretrained(out_dir)  # with the chat template, as chat_template.jinja
    processor.image_processor.save_pretrained(out_dir)
    settings = {key: value for key, value in processor.to_dict().items() if key not in processor.get_attributes()}
    (out_dir / PROCESSOR_NAME).write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")


# --- text families


def _qwen25(out_dir: Path, corpus: list[str], seed: int) -> None:
    tokenizer = _tokenizer(
        corpus, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], QWEN25_TEMPLATE, eos="<|im_end|>", pad="<|endoftext|>"
    )
    # Qwen2.5 instruct: config bos is <|endoftext|>, generation stops at <|im_end|> or <|endoftext|>
    special = _special_ids(tokenizer) | {"bos_token_id": tokenizer.pad_token_id}
    config = Qwen2Config(**TEXT_SIZE, **special, rope_theta=1e6, tie_word_embeddings=False, dtype="float32")
    _save(out_dir, Qwen2ForCausalLM, config, seed, _ids(tokenizer, "<|im_end|>", "<|endoftext|>"), tokenizer)


def _llama3(out_dir: Path, corpus: list[str], seed: int) -> None:
    specials = [
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|finetune_right_pad_id|>",
        "<|start_header_id|>",
        "<|end_header_id|>",
        "<|eom_id|>",
        "<|eot_id|>",
        "<|python_tag|>",
    ]
    # The base tokenizer's eos is <|end_of_text|>; instruct turns end with <|eot_id|> (generation stops on both).
    # The real tokenizer has no pad token; Llama 3.1's reserved <|finetune_right_pad_id|> serves as one.
    tokenizer = _tokenizer(
        corpus,
        specials,
        LLAMA3_TEMPLATE,
        eos="<|end_of_text|>",
        pad="<|finetune_right_pad_id|>",
        bos="<|begin_of_text|>",
    )
    rope = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        # below max_position_embeddings, as transformers requires (Llama 3.2: 8192 of 131072)
        "original_max_position_embeddings": TEXT_SIZE["max_position_embeddings"] // 2,
    }
    config = LlamaConfig(
        **TEXT_SIZE, **_special_ids(tokenizer), rope_parameters=rope, tie_word_embeddings=False, dtype="float32"
    )
    eos_ids = _ids(tokenizer, "<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")
    _save(out_dir, LlamaForCausalLM, config, seed, eos_ids, tokenizer)


def _gemma(out_dir: Path, corpus: list[str], seed: int) -> None:
    # Gemma's own id order: <pad> 0, <eos> 1, <bos> 2, <unk> 3.
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    tokenizer = _tokenizer(corpus, specials, GEMMA3_TEMPLATE, eos="<eos>", pad="<pad>", bos="<bos>")
    config = Gemma3TextConfig(
        **TEXT_SIZE,
        **_special_ids(tokenizer),
        head_dim=HEAD_DIM,
        query_pre_attn_scalar=HEAD_DIM,
        sliding_window=32,
        layer_types=["sliding_attention", "full_attention"],
        tie_word_embeddings=False,  # real Gemma checkpoints tie them; both transformers and vLLM also take untied
        dtype="float32",
    )
    _save(out_dir, Gemma3ForCausalLM, config, seed, _ids(tokenizer, "<eos>", "<end_of_turn>"), tokenizer)


# --- image-text families

QWEN_VL_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]


def _qwen2_vl(out_dir: Path, corpus: list[str], seed: int) -> None:
    tokenizer = _tokenizer(corpus, QWEN_VL_SPECIALS, QWEN2_VL_TEMPLATE, eos="<|im_end|>", pad="<|endoftext|>")
    image, video, start, end = _ids(tokenizer, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    text = Qwen2VLTextConfig(
        **TEXT_SIZE,
        **(_special_ids(tokenizer) | {"bos_token_id": tokenizer.pad_token_id}),
        # M-RoPE: (temporal, height, width) sections of head_dim / 2, Qwen2-VL's 16:24:24 split scaled down
        rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]},
    )
    vision = {"depth": 1, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2, "hidden_size": TEXT_SIZE["hidden_size"]}
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=image,
        video_token_id=video,
        vision_start_token_id=start,
        vision_end_token_id=end,
        tie_word_embeddings=False,
        dtype="float32",
    )
    # Dynamic resolution: images are resized to multiples of 28 px (14 px patches merged 2×2) between these bounds.
    image_processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=112 * 112)
    processor = without_video_processor(
        Qwen2VLProcessor, image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN2_VL_TEMPLATE
    )
    eos_ids = _ids(tokenizer, "<|im_end|>", "<|endoftext|>")
    _save(out_dir, Qwen2VLForConditionalGeneration, config, seed, eos_ids, tokenizer, processor)


LLAVA_NEXT_TILE, LLAVA_NEXT_PATCH = 32, 8


def _llava_next(out_dir: Path, corpus: list[str], seed: int) -> None:
    specials = ["<unk>", "<s>", "</s>", "<image>"]
    tokenizer = _tokenizer(corpus, specials, LLAVA_NEXT_TEMPLATE, eos="</s>", pad="<unk>", bos="<s>")
    tile = LLAVA_NEXT_TILE
    # "anyres": the image is tiled on the best of these grids (in pixels), plus one downscaled overview tile
    pinpoints = [[tile, 2 * tile], [2 * tile, tile], [2 * tile, 2 * tile], [3 * tile, tile], [tile, 3 * tile]]
    text = MistralConfig(
        **TEXT_SIZE, **_special_ids(tokenizer), sliding_window=None, rope_theta=1e6, tie_word_embeddings=False
    )
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(
            image_size=tile,
            patch_size=LLAVA_NEXT_PATCH,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,  # features come from the second-to-last layer
            num_attention_heads=2,
            projection_dim=32,
        ),
        text_config=text,
        image_token_index=_ids(tokenizer, "<image>")[0],
        image_grid_pinpoints=pinpoints,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_seq_length=(tile // LLAVA_NEXT_PATCH) ** 2,
        tie_word_embeddings=False,
        dtype="float32",
    )
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile}, image_grid_pinpoints=pinpoints
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=LLAVA_NEXT_PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's class token, dropped by the "default" strategy
        chat_template=LLAVA_NEXT_TEMPLATE,
        image_token="<image>",
    )
    _save(out_dir, LlavaNextForConditionalGeneration, config, seed, _ids(tokenizer, "</s>"), tokenizer, processor)


INTERNVL_TILE, INTERNVL_PATCH = 56, 14


def _internvl(out_dir: Path, corpus: list[str], seed: int) -> None:
    named = {
        "start_image_token": "<img>",
        "end_image_token": "</img>",
        "context_image_token": "<IMG_CONTEXT>",
        "video_token": "<video>",
    }
    specials = [*QWEN_VL_SPECIALS, "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
    tokenizer = _tokenizer(corpus, specials, INTERNVL_TEMPLATE, eos="<|im_end|>", pad="<|endoftext|>", named=named)
    text = Qwen2Config(
        **TEXT_SIZE,
        **(_special_ids(tokenizer) | {"bos_token_id": tokenizer.pad_token_id}),
        rope_theta=1e6,
        tie_word_embeddings=False,
    )
    # pixel shuffle (downsample 0.5) merges 2×2 patches: (56 / 14)² / 4 = 4 tokens per tile
    tokens_per_tile = (INTERNVL_TILE // INTERNVL_PATCH) ** 2 // 4
    config = InternVLConfig(
        vision_config=InternVLVisionConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=[INTERNVL_TILE, INTERNVL_TILE],
            patch_size=[INTERNVL_PATCH, INTERNVL_PATCH],
        ),
        text_config=text,
        image_token_id=_ids(tokenizer, "<IMG_CONTEXT>")[0],
        image_seq_length=tokens_per_tile,
        downsample_ratio=0.5,
        vision_feature_layer=-1,
        tie_word_embeddings=False,
        dtype="float32",
    )
    # InternVL's dynamic tiling: up to 4 tiles on the best aspect-ratio grid, plus a thumbnail tile
    image_processor = GotOcr2ImageProcessorPil(
        size={"height": INTERNVL_TILE, "width": INTERNVL_TILE},
        crop_to_patches=True,
        min_patches=1,
        max_patches=4,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    processor = without_video_processor(
        InternVLProcessor,
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_length=tokens_per_tile,
        chat_template=INTERNVL_TEMPLATE,
    )
    eos_ids = _ids(tokenizer, "<|im_end|>", "<|endoftext|>")
    _save(out_dir, InternVLForConditionalGeneration, config, seed, eos_ids, tokenizer, processor)


def _llava(out_dir: Path, corpus: list[str], seed: int) -> None:
    """The project's own tiny LLaVA (CLIP + Qwen2, ChatML), at this module's sizes."""
    text = TextModelSpec(
        vocab_size=VOCAB_SIZE,
        hidden_size=TEXT_SIZE["hidden_size"],
        num_layers=TEXT_SIZE["num_hidden_layers"],
        num_heads=TEXT_SIZE["num_attention_heads"],
        num_kv_heads=TEXT_SIZE["num_key_value_heads"],
        intermediate_size=TEXT_SIZE["intermediate_size"],
        max_position_embeddings=TEXT_SIZE["max_position_embeddings"],
    )
    vision = VisionSpec(image_size=32, patch_size=8, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    build_image_text_model(out_dir, corpus, text, vision, seed=seed)


_BUILDERS: dict[str, Callable[[Path, list[str], int], None]] = {
    "qwen2.5": _qwen25,
    "llama3": _llama3,
    "gemma": _gemma,
    "qwen2-vl": _qwen2_vl,
    "llava-next": _llava_next,
    "internvl": _internvl,
    "llava": _llava,
}
