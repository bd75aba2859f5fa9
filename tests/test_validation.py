"""Request validation: every rule rejects its bad field by exact path, and valid requests of every method pass.

Requests are built from the real generated messages. Each method has one valid request (`valid`);
the table of bad requests overrides one field of it, so each row shows only what makes it bad.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor_pool
from google.protobuf.message import Message
from PIL import Image as PILImage

from mpo.config import RequestLimits
from mpo.serving.validation import (
    GREEDY_TEMPERATURE,
    RULES,
    STREAM_VALIDATORS,
    InvalidRequest,
    WeightStreamValidator,
    request_type,
    stream_validator_for,
    validate_request,
)
from mpo.v1 import common_pb2, controller_pb2, reward_pb2, rollout_pb2, trainer_pb2

GENERATE = "/mpo.v1.RolloutService/Generate"
GENERATE_STREAM = "/mpo.v1.RolloutService/GenerateStream"
CONTINUE = "/mpo.v1.RolloutService/Continue"
LOAD_WEIGHTS = "/mpo.v1.RolloutService/LoadWeights"
LOAD_FROM_STORAGE = "/mpo.v1.RolloutService/LoadWeightsFromStorage"
SCORE = "/mpo.v1.RewardService/Score"
BUILD_PAIRS = "/mpo.v1.RewardService/BuildPairs"
TRAIN = "/mpo.v1.TrainerService/Train"
PUBLISH = "/mpo.v1.TrainerService/PublishWeights"
START_RUN = "/mpo.v1.ControllerService/StartRun"
RUN_ID_METHODS = [
    f"/mpo.v1.ControllerService/{name}"
    for name in ("PauseRun", "ResumeRun", "StopRun", "GetRun", "ListRounds", "WatchRounds")
]

#: Small limits, so oversize requests stay small.
LIMITS = RequestLimits(
    max_batch_prompts=4,
    max_samples_per_prompt=8,
    max_tokens=64,
    max_images_per_prompt=2,
    max_image_bytes=4096,
    max_question_chars=100,
    max_meta_bytes=128,
    max_pairs_per_request=4,
    max_samples_per_request=8,
    max_image_pixels=64 * 64,
    max_stop_strings=3,
    max_stop_chars=16,
    max_prefix_chars=50,
)


def _png(size: tuple[int, int] = (4, 3)) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", size, (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def declared_png(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header declares `width` x `height` (IHDR CRC fixed): a few dozen bytes that a
    decoder would expand to width x height x 3 bytes, a decompression bomb."""
    data = bytearray(_png((1, 1)))
    data[16:24] = struct.pack(">II", width, height)  # IHDR data starts after signature, length and type
    data[29:33] = struct.pack(">I", zlib.crc32(data[12:29]))  # CRC over the chunk type and data
    return bytes(data)


def animated(image_format: str, frames: int, size: tuple[int, int] = (32, 32)) -> bytes:
    """An animation of `frames` different frames (encoders merge equal ones)."""
    images = [PILImage.new("RGB", size, (40 * i % 256, 0, 0)) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, format=image_format, save_all=True, append_images=images[1:])
    return buffer.getvalue()


PNG = _png()
#: A PNG whose last pixel-data byte is flipped: the header still says PNG, the chunk CRC does not match.
CORRUPT_PNG = PNG[:-20] + bytes([PNG[-20] ^ 0xFF]) + PNG[-19:]
#: 97 bytes declaring 13,000 x 13,000 pixels: about 0.5 GB once decoded.
BOMB_PNG = declared_png(13_000, 13_000)
SHA = "ab" * 32


def prompt(pid: str = "p0", **fields: Any) -> common_pb2.Prompt:
    values: dict[str, Any] = {"id": pid, "question": "What is 2 + 3?", "task": "arith", "answer": "5"}
    return common_pb2.Prompt(**(values | fields))


def image(data: bytes | None = None, uri: str | None = None) -> common_pb2.Image:
    return common_pb2.Image(data=data, uri=uri)


def sampling(**fields: Any) -> common_pb2.SamplingParams:
    values: dict[str, Any] = {"n": 2, "temperature": 0.7, "top_p": 0.9, "max_tokens": 32, "stop": ["\n\n"]}
    return common_pb2.SamplingParams(**(values | fields))


def sample(prompt_id: str = "p0", index: int = 0) -> common_pb2.Sample:
    return common_pb2.Sample(prompt_id=prompt_id, index=index, text="Final answer: 5", policy_version=1)


def pair(pid: str = "pair0", **fields: Any) -> common_pb2.PreferencePair:
    values: dict[str, Any] = {
        "id": pid,
        "prompt": prompt(),
        "chosen": "2 + 3 = 5.\nFinal answer: 5",
        "rejected": "2 + 3 = 6.\nFinal answer: 6",
        "source": common_pb2.PAIR_SOURCE_CORRECTNESS,
    }
    return common_pb2.PreferencePair(**(values | fields))


def manifest(**fields: Any) -> rollout_pb2.WeightManifest:
    values: dict[str, Any] = {
        "version": 3,
        "tensor_count": 2,
        "total_bytes": 10,
        "sha256": SHA,
        "format": "safetensors",
    }
    return rollout_pb2.WeightManifest(**(values | fields))


def continuation(**fields: Any) -> rollout_pb2.Continuation:
    values: dict[str, Any] = {"prompt": prompt(), "prefix": "2 + 3 is", "drop_images": True}
    return rollout_pb2.Continuation(**(values | fields))


def _prompts_and_samples() -> dict[str, Any]:
    return {"prompts": [prompt("p0"), prompt("p1")], "samples": [sample("p0", 0), sample("p0", 1), sample("p1", 0)]}


def _generate() -> dict[str, Any]:
    return {
        "prompts": [
            prompt("p0", images=[image(data=PNG), image(uri="file:///data/cat.png")], choices=["4", "5"], answer="B"),
            prompt(
                "p1",
                answer=None,
                task="describe",
                question="Describe the picture.",
                meta_json='{"scene":[{"colour":"red","shape":"circle"}]}',
            ),
        ],
        "sampling": sampling(),
    }


#: Fields of one valid request per method with rules.
VALID_FIELDS: dict[str, Callable[[], dict[str, Any]]] = {
    GENERATE: _generate,
    GENERATE_STREAM: _generate,
    CONTINUE: lambda: {
        "continuations": [continuation(), continuation(prefix="Adding")],
        "sampling": sampling(n=1),
    },
    LOAD_FROM_STORAGE: lambda: {"manifest": manifest(), "uri": "/shared/weights/v3"},
    SCORE: _prompts_and_samples,
    BUILD_PAIRS: lambda: (
        _prompts_and_samples()
        | {"round": 3, "options": reward_pb2.PairOptions(max_pairs_per_prompt=2, dropout_prefix_fraction=0.5)}
    ),
    TRAIN: lambda: {
        "pairs": [pair("a"), pair("b", source=common_pb2.PAIR_SOURCE_DROPOUT_NTP, rejected="2 + 3 is 6")],
        "round": 1,
    },
    PUBLISH: lambda: {"version": 2, "transport": trainer_pb2.WEIGHT_TRANSPORT_GRPC_STREAM},
    START_RUN: lambda: {"config_yaml": "objective:\n  beta: 0.1\n"},
    **{method: (lambda: {"run_id": "run-1"}) for method in RUN_ID_METHODS},
}


def valid(method: str, **overrides: Any) -> Message:
    """The valid request of `method` with some fields replaced (None leaves a field unset)."""
    return request_type(method)(**(VALID_FIELDS[method]() | overrides))


def bad(method: str, field: str, reason: str, **overrides: Any) -> Any:
    name = method.rsplit("/", 1)[1]
    return pytest.param(method, valid(method, **overrides), field, reason, id=f"{name}:{field}:{reason}")


BAD_REQUESTS = [
    # Prompt lists, shown on Generate, then reused by the other methods.
    bad(GENERATE, "prompts", "must not be empty", prompts=[]),
    bad(
        GENERATE, "prompts", "at most 4 allowed (max_batch_prompts), got 5", prompts=[prompt(f"p{i}") for i in range(5)]
    ),
    bad(GENERATE, "prompts[0].id", "must not be empty", prompts=[prompt("")]),
    bad(
        GENERATE,
        "prompts[2].id",
        "duplicate prompt id 'p0'; already used at prompts[0].id",
        prompts=[prompt("p0"), prompt("p1"), prompt("p0")],
    ),
    bad(GENERATE, "prompts[0].question", "must not be empty", prompts=[prompt(question="")]),
    bad(GENERATE, "prompts[0].question", "whitespace only", prompts=[prompt(question=" \n\t")]),
    bad(GENERATE, "prompts[0].question", "at most 100 characters", prompts=[prompt(question="x" * 101)]),
    bad(GENERATE, "prompts[0].task", "must not be empty", prompts=[prompt(task="")]),
    bad(
        GENERATE,
        "prompts[0].meta_json",
        "at most 128 bytes (max_meta_bytes), got 129",
        prompts=[prompt(meta_json='{"a":"' + "x" * 121 + '"}')],
    ),
    bad(  # counted in UTF-8 bytes: 67 characters
        GENERATE,
        "prompts[0].meta_json",
        "at most 128 bytes (max_meta_bytes), got 130",
        prompts=[prompt(meta_json='{"a":"' + "é" * 61 + '"}')],
    ),
    bad(GENERATE, "prompts[0].meta_json", "not valid JSON: ", prompts=[prompt(meta_json="{scene}")]),
    bad(GENERATE, "prompts[0].meta_json", "must be a JSON object, got list", prompts=[prompt(meta_json="[1]")]),
    bad(GENERATE, "prompts[0].meta_json", "NaN is not a JSON number", prompts=[prompt(meta_json='{"a":NaN}')]),
    bad(
        GENERATE,
        "prompts[0].meta_json",
        "nested more than 32 deep",
        prompts=[prompt(meta_json='{"a":' + "[" * 32 + "]" * 32 + "}")],
    ),
    bad(
        TRAIN,
        "pairs[0].prompt.meta_json",
        "must be a JSON object, got str",
        pairs=[pair("a", prompt=prompt(meta_json='"scene"'))],
    ),
    bad(
        GENERATE,
        "prompts[1].task",
        "unknown task 'chess' (known tasks: arith, describe, shapes)",
        prompts=[prompt("p0"), prompt("p1", task="chess")],
    ),
    bad(
        GENERATE,
        "prompts[0].images",
        "at most 2 allowed (max_images_per_prompt), got 3",
        prompts=[prompt(images=[image(data=PNG)] * 3)],
    ),
    bad(GENERATE, "prompts[0].images[1]", "must set data or uri", prompts=[prompt(images=[image(data=PNG), image()])]),
    bad(GENERATE, "prompts[0].images[0].data", "must not be empty", prompts=[prompt(images=[image(data=b"")])]),
    bad(
        GENERATE,
        "prompts[0].images[0].data",
        "at most 4096 bytes (max_image_bytes)",
        prompts=[prompt(images=[image(data=PNG + bytes(4096))])],
    ),
    bad(
        GENERATE,
        "prompts[0].images[0].data",
        "undecodable image",
        prompts=[prompt(images=[image(data=b"\x89PNG not really")])],
    ),
    bad(
        GENERATE,
        "prompts[0].images[1].data",
        "undecodable image",
        prompts=[prompt(images=[image(data=PNG), image(data=CORRUPT_PNG)])],
    ),
    bad(GENERATE, "prompts[0].images[0].uri", "must not be empty", prompts=[prompt(images=[image(uri="")])]),
    # Pixel caps, read from the header before any decoding.
    bad(
        GENERATE,
        "prompts[0].images[0].data",
        "image of 13000x13000 = 169000000 pixels, at most 4096 (max_image_pixels)",
        prompts=[prompt(images=[image(data=BOMB_PNG)])],
    ),
    bad(
        GENERATE,
        "prompts[0].images[1].data",
        "image of 65x64 = 4160 pixels, at most 4096 (max_image_pixels)",
        prompts=[prompt(images=[image(data=PNG), image(data=_png((65, 64)))])],
    ),
    bad(
        GENERATE,
        "prompts[0].images[0].data",
        "image of 32x32 x 5 frames = 5120 pixels",
        prompts=[prompt(images=[image(data=animated("PNG", 5))])],
    ),
    bad(
        GENERATE,
        "prompts[0].images[0].data",
        "image of 32x32 x 5 frames = 5120 pixels",
        prompts=[prompt(images=[image(data=animated("GIF", 5))])],
    ),
    # Past PIL's own bomb guard, which refuses at open: the same code and field.
    bad(
        GENERATE,
        "prompts[0].images[0].data",
        "undecodable image (DecompressionBombError",
        prompts=[prompt(images=[image(data=declared_png(20_000, 20_000))])],
    ),
    bad(
        GENERATE_STREAM,
        "prompts[0].images[0].data",
        "max_image_pixels",
        prompts=[prompt(images=[image(data=BOMB_PNG)])],
    ),
    bad(GENERATE, "prompts[0].choices[1]", "must not be empty", prompts=[prompt(choices=["4", " "])]),
    bad(GENERATE, "prompts[0].answer", "must not be empty", prompts=[prompt(answer="")]),
    bad(GENERATE_STREAM, "prompts", "must not be empty", prompts=[]),
    bad(
        GENERATE_STREAM,
        "prompts[0].images[0].data",
        "undecodable image",
        prompts=[prompt(images=[image(data=b"GIF89a")])],
    ),
    # SamplingParams.
    bad(GENERATE, "sampling", "required", sampling=None),
    bad(GENERATE_STREAM, "sampling", "required", sampling=None),
    bad(GENERATE, "sampling.n", "must be >= 1, got 0", sampling=sampling(n=0)),
    bad(GENERATE, "sampling.n", "must be at most 8 (max_samples_per_prompt), got 9", sampling=sampling(n=9)),
    bad(GENERATE, "sampling.n", "max_samples_per_prompt", sampling=sampling(n=2**32 - 1)),
    bad(GENERATE, "sampling.temperature", "must be >= 0", sampling=sampling(temperature=-0.5)),
    bad(GENERATE, "sampling.temperature", "finite", sampling=sampling(temperature=float("nan"))),
    bad(GENERATE, "sampling.temperature", "finite", sampling=sampling(temperature=float("inf"))),
    bad(GENERATE, "sampling.top_p", "must be in [0, 1]", sampling=sampling(top_p=1.5)),
    bad(GENERATE, "sampling.top_p", "must be in [0, 1]", sampling=sampling(top_p=-0.1)),
    bad(GENERATE, "sampling.top_p", "finite", sampling=sampling(top_p=float("nan"))),
    bad(GENERATE, "sampling.top_p", "finite", sampling=sampling(top_p=float("-inf"))),
    bad(GENERATE, "sampling.max_tokens", "must be at most 64 (max_tokens), got 65", sampling=sampling(max_tokens=65)),
    bad(GENERATE, "sampling.stop[1]", "must not be empty", sampling=sampling(stop=["\n", ""])),
    bad(
        GENERATE,
        "sampling.stop",
        "at most 3 allowed (max_stop_strings), got 4",
        sampling=sampling(stop=["a", "b", "c", "d"]),
    ),
    bad(
        GENERATE,
        "sampling.stop[1]",
        "at most 16 characters (max_stop_chars), got 17",
        sampling=sampling(stop=["\n", "x" * 17]),
    ),
    # Greedy decoding gives n identical samples (vLLM refuses n > 1 there).
    bad(
        GENERATE,
        "sampling.n",
        "must be 1 with greedy decoding (temperature below 1e-05), got 2",
        sampling=sampling(n=2, temperature=0.0),
    ),
    bad(GENERATE, "sampling.n", "greedy", sampling=sampling(n=8, temperature=GREEDY_TEMPERATURE / 2)),
    bad(GENERATE_STREAM, "sampling.n", "greedy", sampling=sampling(n=2, temperature=0.0)),
    # Continue.
    bad(CONTINUE, "continuations", "must not be empty", continuations=[]),
    bad(CONTINUE, "continuations", "at most 4 allowed (max_batch_prompts)", continuations=[continuation()] * 5),
    bad(CONTINUE, "continuations[0].prompt", "required", continuations=[continuation(prompt=None)]),
    bad(
        CONTINUE,
        "continuations[1].prompt.question",
        "must not be empty",
        continuations=[continuation(), continuation(prompt=prompt(question=""))],
    ),
    bad(
        CONTINUE,
        "continuations[0].prompt.images[0].data",
        "undecodable image",
        continuations=[continuation(prompt=prompt(images=[image(data=b"jpeg?")]))],
    ),
    bad(CONTINUE, "continuations[0].prefix", "must not be empty", continuations=[continuation(prefix="")]),
    bad(
        CONTINUE,
        "continuations[1].prefix",
        "at most 50 characters (max_prefix_chars), got 51",
        continuations=[continuation(), continuation(prefix="x" * 51)],
    ),
    bad(
        CONTINUE,
        "continuations[0].prompt.images[0].data",
        "max_image_pixels",
        continuations=[continuation(prompt=prompt(images=[image(data=BOMB_PNG)]))],
    ),
    bad(
        CONTINUE,
        "continuations[1].min_total_tokens",
        "must be at most max_total_tokens (8), got 9",
        continuations=[continuation(), continuation(min_total_tokens=9, max_total_tokens=8)],
    ),
    bad(CONTINUE, "sampling.stop", "max_stop_strings", sampling=sampling(n=1, stop=["a", "b", "c", "d"])),
    bad(CONTINUE, "sampling", "required", sampling=None),
    bad(CONTINUE, "sampling.n", "must be 1 for Continue", sampling=sampling(n=2)),
    bad(CONTINUE, "sampling.n", "must be >= 1", sampling=sampling(n=0)),
    bad(CONTINUE, "sampling.top_p", "finite", sampling=sampling(n=1, top_p=float("nan"))),
    # Score and BuildPairs.
    bad(SCORE, "prompts", "must not be empty", prompts=[]),
    bad(SCORE, "prompts[1].id", "duplicate prompt id 'p0'", prompts=[prompt("p0"), prompt("p0")]),
    bad(SCORE, "prompts[0].task", "unknown task", prompts=[prompt("p0", task="Arith"), prompt("p1")]),
    bad(SCORE, "samples", "must not be empty", samples=[]),
    bad(
        SCORE,
        "samples",
        "at most 8 allowed (max_samples_per_request), got 9",
        samples=[sample("p0", i) for i in range(9)],
    ),
    bad(SCORE, "samples[0].prompt_id", "must not be empty", samples=[sample("")]),
    bad(SCORE, "samples[1].prompt_id", "no prompt with id 'p9' in this request", samples=[sample("p0"), sample("p9")]),
    bad(
        SCORE,
        "samples[2].index",
        "duplicate sample (prompt_id 'p0', index 1); already used at samples[0].index",
        samples=[sample("p0", 1), sample("p1", 1), sample("p0", 1)],
    ),
    bad(BUILD_PAIRS, "prompts", "must not be empty", prompts=[]),
    bad(BUILD_PAIRS, "prompts", "at most 4 allowed (max_batch_prompts)", prompts=[prompt(f"p{i}") for i in range(5)]),
    bad(
        BUILD_PAIRS,
        "prompts[0].question",
        "at most 100 characters",
        prompts=[prompt("p0", question="?" * 101), prompt("p1")],
    ),
    bad(BUILD_PAIRS, "samples", "must not be empty", samples=[]),
    bad(BUILD_PAIRS, "samples[0].prompt_id", "no prompt with id", samples=[sample("P0")]),
    bad(BUILD_PAIRS, "samples[1].index", "duplicate sample", samples=[sample("p1", 0), sample("p1", 0)]),
    bad(
        BUILD_PAIRS,
        "options.dropout_prefix_fraction",
        "must be in [0, 1), got 1",
        options=reward_pb2.PairOptions(dropout_prefix_fraction=1.0),
    ),
    bad(
        BUILD_PAIRS,
        "options.dropout_prefix_fraction",
        "must be in [0, 1)",
        options=reward_pb2.PairOptions(dropout_prefix_fraction=-0.25),
    ),
    bad(
        BUILD_PAIRS,
        "options.dropout_prefix_fraction",
        "finite",
        options=reward_pb2.PairOptions(dropout_prefix_fraction=float("nan")),
    ),
    bad(
        BUILD_PAIRS,
        "options.dropout_prefix_fraction",
        "finite",
        options=reward_pb2.PairOptions(dropout_prefix_fraction=float("inf")),
    ),
    bad(
        BUILD_PAIRS,
        "options.dropout_sampling.temperature",
        "must be >= 0",
        options=reward_pb2.PairOptions(dropout_sampling=common_pb2.SamplingParams(temperature=-1.0)),
    ),
    bad(
        BUILD_PAIRS,
        "options.dropout_sampling.top_p",
        "finite",
        options=reward_pb2.PairOptions(dropout_sampling=common_pb2.SamplingParams(top_p=float("nan"))),
    ),
    bad(
        BUILD_PAIRS,
        "options.dropout_sampling.stop[1]",
        "must not be empty",
        options=reward_pb2.PairOptions(dropout_sampling=common_pb2.SamplingParams(stop=[".", ""])),
    ),
    # Train.
    bad(TRAIN, "pairs", "must not be empty", pairs=[]),
    bad(TRAIN, "pairs", "at most 4 allowed (max_pairs_per_request), got 5", pairs=[pair(f"x{i}") for i in range(5)]),
    bad(TRAIN, "pairs[0].id", "must not be empty", pairs=[pair("")]),
    bad(TRAIN, "pairs[1].id", "duplicate pair id 'a'; already used at pairs[0].id", pairs=[pair("a"), pair("a")]),
    bad(TRAIN, "pairs[0].prompt", "required", pairs=[pair(prompt=None)]),
    bad(TRAIN, "pairs[0].prompt.task", "unknown task 'poetry'", pairs=[pair(prompt=prompt(task="poetry"))]),
    bad(TRAIN, "pairs[0].prompt.images[0]", "must set data or uri", pairs=[pair(prompt=prompt(images=[image()]))]),
    bad(
        TRAIN,
        "pairs[0].prompt.images[0].data",
        "max_image_pixels",
        pairs=[pair(prompt=prompt(images=[image(data=BOMB_PNG)]))],
    ),
    bad(TRAIN, "pairs[0].chosen", "must not be empty", pairs=[pair(chosen="")]),
    bad(TRAIN, "pairs[0].rejected", "must not be empty", pairs=[pair(rejected="")]),
    bad(TRAIN, "pairs[0].rejected", "must differ from chosen", pairs=[pair(chosen="same", rejected="same")]),
    bad(
        TRAIN,
        "pairs[0].source",
        "must be set (not PAIR_SOURCE_UNSPECIFIED)",
        pairs=[pair(source=common_pb2.PAIR_SOURCE_UNSPECIFIED)],
    ),
    bad(TRAIN, "pairs[0].source", "unknown value 99", pairs=[pair(source=99)]),
    # Pairs that name their prompt by id (sent once in `prompts`).
    bad(TRAIN, "pairs[0].prompt_id", "either prompt or prompt_id", pairs=[pair(prompt_id="p0")], prompts=[prompt()]),
    bad(TRAIN, "pairs[0].prompt", "required", pairs=[pair(prompt=None)], prompts=[prompt()]),
    bad(TRAIN, "pairs[0].prompt_id", "no prompt with id 'p9' in prompts", pairs=[pair(prompt=None, prompt_id="p9")]),
    bad(
        TRAIN,
        "prompts[1].id",
        "duplicate prompt id 'p0'; already used at prompts[0].id",
        pairs=[pair("a", prompt=None, prompt_id="p0"), pair("b", prompt=None, prompt_id="p0")],
        prompts=[prompt(), prompt()],
    ),
    bad(
        TRAIN,
        "prompts[1]",
        "no pair names prompt id 'p1'",
        pairs=[pair("a", prompt=None, prompt_id="p0"), pair("b", prompt=None, prompt_id="p0")],
        prompts=[prompt(), prompt("p1")],
    ),
    bad(
        TRAIN,
        "prompts",
        "at most one per pair (1), got 2",
        pairs=[pair(prompt=None, prompt_id="p0")],
        prompts=[prompt()] * 2,
    ),
    bad(
        TRAIN, "prompts[0].task", "unknown task", pairs=[pair(prompt=None, prompt_id="p0")], prompts=[prompt(task="x")]
    ),
    # LoadWeightsFromStorage (the manifest rules are the stream's, see below).
    bad(LOAD_FROM_STORAGE, "manifest", "required", manifest=None),
    bad(LOAD_FROM_STORAGE, "manifest.version", "must be >= 1, got 0", manifest=manifest(version=0)),
    bad(LOAD_FROM_STORAGE, "manifest.tensor_count", "must be >= 1, got 0", manifest=manifest(tensor_count=0)),
    bad(LOAD_FROM_STORAGE, "manifest.total_bytes", "must be >= 1, got 0", manifest=manifest(total_bytes=0)),
    bad(LOAD_FROM_STORAGE, "manifest.sha256", "64 lowercase hex", manifest=manifest(sha256=SHA.upper())),
    bad(LOAD_FROM_STORAGE, "manifest.sha256", "64 lowercase hex", manifest=manifest(sha256=SHA[:-1])),
    bad(LOAD_FROM_STORAGE, "manifest.sha256", "64 lowercase hex", manifest=manifest(sha256=SHA + "\n")),
    bad(LOAD_FROM_STORAGE, "manifest.sha256", "64 lowercase hex", manifest=manifest(sha256="")),
    bad(
        LOAD_FROM_STORAGE, "manifest.format", "must be 'safetensors', got 'pickle'", manifest=manifest(format="pickle")
    ),
    bad(LOAD_FROM_STORAGE, "uri", "must not be empty", uri=""),
    # PublishWeights.
    bad(PUBLISH, "version", "must be >= 1, got 0", version=0),
    bad(PUBLISH, "transport", "must be set (not WEIGHT_TRANSPORT_UNSPECIFIED)", transport=0),
    bad(PUBLISH, "transport", "unknown value 7", transport=7),
    # Controller.
    bad(START_RUN, "config_yaml", "must not be empty", config_yaml=""),
    bad(START_RUN, "config_yaml", "whitespace only", config_yaml="  \n"),
    *(bad(method, "run_id", "must not be empty", run_id="") for method in RUN_ID_METHODS),
]


@pytest.mark.parametrize(("method", "request_message", "field", "reason"), BAD_REQUESTS)
def test_bad_request_is_rejected_with_its_field(method: str, request_message: Message, field: str, reason: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_request(method, request_message, LIMITS)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.field == field
    assert reason in caught.value.reason
    assert str(caught.value) == f"{field}: {caught.value.reason}"


def test_every_method_with_rules_has_bad_examples() -> None:
    covered = {param.values[0] for param in BAD_REQUESTS}
    assert covered == set(RULES)


@pytest.mark.parametrize("method", sorted(RULES))
def test_valid_request_passes(method: str) -> None:
    validate_request(method, valid(method), LIMITS)


def test_every_method_with_rules_has_a_valid_example() -> None:
    assert set(VALID_FIELDS) == set(RULES)


@pytest.mark.parametrize(
    ("method", "overrides"),
    [
        (GENERATE, {"sampling": sampling(n=8, temperature=2 * GREEDY_TEMPERATURE, top_p=0.0, max_tokens=64, stop=[])}),
        (GENERATE, {"sampling": sampling(n=1, temperature=0.0)}),  # greedy, one sample
        (GENERATE, {"sampling": sampling(max_tokens=0)}),  # unset: the service resolves it
        (GENERATE, {"sampling": sampling(stop=["x" * 16] * 3)}),
        (GENERATE, {"prompts": [prompt(images=[image(data=_png((64, 64))), image(data=animated("PNG", 4))])]}),
        (CONTINUE, {"continuations": [continuation(prefix="x" * 50)]}),
        (GENERATE, {"sampling": sampling(n=1, temperature=100.0, top_p=1.0, max_tokens=1)}),
        (GENERATE, {"sampling": common_pb2.SamplingParams(n=1, max_tokens=1)}),
        (GENERATE, {"prompts": [prompt(f"p{i}") for i in range(4)]}),
        (GENERATE, {"prompts": [prompt(question="x" * 100, images=[image(data=PNG)] * 2)]}),
        (GENERATE, {"prompts": [prompt(answer=None, choices=[])]}),
        (GENERATE, {"prompts": [prompt(meta_json='{"a":' + "[" * 31 + "]" * 31 + "}")]}),  # 32 deep
        (GENERATE, {"prompts": [prompt(meta_json='{"a":"' + "x" * 120 + '"}')]}),  # 128 bytes
        (GENERATE, {"prompts": [prompt(meta_json="{}")]}),
        (SCORE, {"samples": [sample("p0", i) for i in range(8)]}),
        (BUILD_PAIRS, {"options": None}),
        (BUILD_PAIRS, {"options": reward_pb2.PairOptions(dropout_prefix_fraction=0.999)}),
        (TRAIN, {"pairs": [pair(f"x{i}") for i in range(4)]}),  # pairs may share a prompt
        (TRAIN, {"pairs": [pair(f"x{i}", prompt=None, prompt_id="p0") for i in range(4)], "prompts": [prompt()]}),
        (TRAIN, {"pairs": [pair("a"), pair("b", prompt=None, prompt_id="p1")], "prompts": [prompt("p1")]}),  # mixed
        (CONTINUE, {"continuations": [continuation()] * 4}),  # one prompt, continued several times
        (CONTINUE, {"continuations": [continuation(min_total_tokens=8, max_total_tokens=8)]}),  # held exactly
        (CONTINUE, {"continuations": [continuation(min_total_tokens=9)]}),  # a floor alone: sampling bounds it
        (START_RUN, {"run_id": ""}),  # generated by the controller
    ],
)
def test_boundary_values_pass(method: str, overrides: dict[str, Any]) -> None:
    validate_request(method, valid(method, **overrides), LIMITS)


def test_first_problem_in_message_order_is_reported() -> None:
    request = valid(GENERATE, prompts=[prompt("p0", question=""), prompt("")], sampling=sampling(n=0))
    with pytest.raises(InvalidRequest, match=r"^prompts\[0\]\.question: "):
        validate_request(GENERATE, request, LIMITS)


def test_default_limits_apply() -> None:
    validate_request(GENERATE, valid(GENERATE, prompts=[prompt(f"p{i}") for i in range(256)]), RequestLimits())
    with pytest.raises(InvalidRequest, match=r"^prompts: at most 256 allowed"):
        validate_request(GENERATE, valid(GENERATE, prompts=[prompt(f"p{i}") for i in range(257)]), RequestLimits())


def test_zero_images_allowed_rejects_any_image() -> None:
    limits = LIMITS.model_copy(update={"max_images_per_prompt": 0})
    with pytest.raises(InvalidRequest) as caught:
        validate_request(GENERATE, valid(GENERATE, prompts=[prompt(images=[image(data=PNG)])]), limits)
    assert caught.value.field == "prompts[0].images"


def test_quoted_client_text_is_shortened() -> None:
    """Reasons go into the grpc-message trailer; a huge client string must not be echoed whole."""
    long_id = "x" * 100_000
    with pytest.raises(InvalidRequest) as caught:
        validate_request(GENERATE, valid(GENERATE, prompts=[prompt(long_id), prompt(long_id)]), LIMITS)
    assert caught.value.field == "prompts[1].id"
    assert len(str(caught.value)) < 200


def test_methods_without_rules_pass() -> None:
    validate_request("/mpo.v1.RolloutService/GetStatus", rollout_pb2.GetStatusRequest(), LIMITS)
    validate_request("/mpo.v1.ControllerService/ListRuns", controller_pb2.ListRunsRequest(), LIMITS)
    validate_request("/grpc.health.v1.Health/Check", rollout_pb2.GetStatusRequest(), LIMITS)
    # LoadWeights is client-streaming: checked per message by WeightStreamValidator, not here.
    validate_request(LOAD_WEIGHTS, rollout_pb2.LoadWeightsRequest(), LIMITS)


def test_request_of_another_type_is_a_caller_bug() -> None:
    with pytest.raises(TypeError, match=r"mpo\.v1\.GenerateRequest"):
        validate_request(GENERATE, trainer_pb2.TrainRequest(), LIMITS)


def test_rule_table_names_real_methods_with_single_requests() -> None:
    pool = descriptor_pool.Default()
    for method in RULES:
        service_name, method_name = method.lstrip("/").split("/")
        descriptor = pool.FindServiceByName(service_name).methods_by_name[method_name]
        assert not descriptor.client_streaming, f"{method} streams requests: give it a stream validator"
        assert request_type(method).DESCRIPTOR is descriptor.input_type
    for method in STREAM_VALIDATORS:
        service_name, method_name = method.lstrip("/").split("/")
        assert pool.FindServiceByName(service_name).methods_by_name[method_name].client_streaming


def test_invalid_request_survives_pickling() -> None:
    error = InvalidRequest("sampling.n", "must be >= 1, got 0")
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.field, copy.reason, copy.code, str(copy)) == (
        "sampling.n",
        "must be >= 1, got 0",
        grpc.StatusCode.INVALID_ARGUMENT,
        "sampling.n: must be >= 1, got 0",
    )


# --- image files named by URI (read by the rollout service: mpo/prompts.py) ---------------------


@pytest.fixture(scope="module")
def prompts_module() -> ModuleType:
    """Imported here, not at the top: it loads torch and transformers, which the other tests do not need."""
    from mpo import prompts

    return prompts


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    """(a readable root holding `red.png`, a folder outside it holding `secret.png`)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "red.png").write_bytes(PNG)
    (outside / "secret.png").write_bytes(PNG)
    return root, outside


def _refusal(prompts_module: ModuleType, uri: str, root: Path, limits: RequestLimits = LIMITS) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        prompts_module.read_image_file(uri, [root], "prompts[0].images[0].uri", limits)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.field == "prompts[0].images[0].uri"
    return caught.value


def test_image_file_under_a_root_is_read(prompts_module: ModuleType, roots: tuple[Path, Path]) -> None:
    root, _ = roots
    assert prompts_module.read_image_file(f"file://{root / 'red.png'}", [root], "f", LIMITS) == PNG
    assert prompts_module.read_image_file(str(root / "red.png"), [root], "f", LIMITS) == PNG


def test_unreadable_uris_share_one_text(prompts_module: ModuleType, roots: tuple[Path, Path]) -> None:
    """Outside the roots, missing, a folder, a FIFO (opening it would block), a symlink out of the root,
    a NUL byte: one text, so a caller cannot tell which paths exist outside the roots."""
    root, outside = roots
    os.mkfifo(root / "pipe.png")
    (root / "folder.png").mkdir()
    (root / "link.png").symlink_to(outside / "secret.png")
    uris = [
        str(outside / "secret.png"),
        str(outside / "missing.png"),
        str(root / "missing.png"),
        f"{root}/../outside/secret.png",
        str(root / "folder.png"),
        str(root / "pipe.png"),
        str(root / "link.png"),
        f"{root}/red.png\x00",
        "/dev/zero",
    ]
    reasons = {_refusal(prompts_module, uri, root).reason for uri in uris}
    assert reasons == {"not a readable file under the readable roots"}


def test_oversize_image_file_is_refused_before_reading(prompts_module: ModuleType, roots: tuple[Path, Path]) -> None:
    root, _ = roots
    (root / "big.png").write_bytes(PNG + bytes(LIMITS.max_image_bytes + 1 - len(PNG)))
    reason = _refusal(prompts_module, str(root / "big.png"), root).reason
    assert reason == "file of 4097 bytes, at most 4096 bytes (max_image_bytes)"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (BOMB_PNG, "image of 13000x13000 = 169000000 pixels, at most 4096 (max_image_pixels)"),
        (animated("GIF", 5), "image of 32x32 x 5 frames = 5120 pixels"),
        (CORRUPT_PNG, "undecodable image"),
        (b"", "must not be empty"),
    ],
    ids=["bomb", "animation", "corrupt", "empty"],
)
def test_image_file_is_checked_like_image_data(
    prompts_module: ModuleType, roots: tuple[Path, Path], content: bytes, reason: str
) -> None:
    root, _ = roots
    (root / "bad.png").write_bytes(content)
    assert reason in _refusal(prompts_module, str(root / "bad.png"), root).reason


def test_no_roots_reads_nothing(prompts_module: ModuleType, roots: tuple[Path, Path]) -> None:
    root, _ = roots
    with pytest.raises(InvalidRequest, match="no readable_roots are configured"):
        prompts_module.read_image_file(str(root / "red.png"), [], "f", LIMITS)


def test_weights_may_name_a_folder(prompts_module: ModuleType, roots: tuple[Path, Path]) -> None:
    """LoadWeightsFromStorage names shard folders: `resolve_readable` takes folders unless told not to."""
    root, outside = roots
    assert prompts_module.resolve_readable(str(root), [root], "uri") == root.resolve()
    for uri in (str(outside), str(root / "missing")):
        with pytest.raises(InvalidRequest, match=r"^uri: not a readable file or directory under the readable roots$"):
            prompts_module.resolve_readable(uri, [root], "uri")


# --- LoadWeights stream ---------------------------------------------------------------------------------------


def manifest_message(**fields: Any) -> rollout_pb2.LoadWeightsRequest:
    return rollout_pb2.LoadWeightsRequest(manifest=manifest(**fields))


def chunk_message(index: int, payload: bytes) -> rollout_pb2.LoadWeightsRequest:
    return rollout_pb2.LoadWeightsRequest(chunk=rollout_pb2.WeightChunk(index=index, payload=payload))


def test_weight_stream_happy_path() -> None:
    validator = stream_validator_for(LOAD_WEIGHTS)
    assert isinstance(validator, WeightStreamValidator)
    assert validator.manifest is None and validator.bytes_received == 0
    validator.feed(manifest_message(total_bytes=10))
    validator.feed(chunk_message(0, b"abcd"))
    validator.feed(chunk_message(1, b"efghij"))
    validator.finish()
    assert validator.manifest == manifest(total_bytes=10)
    assert validator.bytes_received == 10
    assert validator.chunks_received == 2


def test_no_stream_validator_for_unary_methods() -> None:
    assert stream_validator_for(GENERATE) is None


@pytest.mark.parametrize(
    ("messages", "field", "reason"),
    [
        pytest.param([chunk_message(0, b"x")], "chunk", "chunk before manifest", id="chunk-before-manifest"),
        pytest.param([rollout_pb2.LoadWeightsRequest()], "part", "must set manifest or chunk", id="empty-message"),
        pytest.param([manifest_message(sha256="xyz")], "manifest.sha256", "64 lowercase hex", id="bad-manifest"),
        pytest.param([manifest_message(format="pt")], "manifest.format", "safetensors", id="bad-format"),
        pytest.param(
            [manifest_message(), chunk_message(0, b"abc"), manifest_message()],
            "manifest",
            "only the first message",
            id="second-manifest",
        ),
        pytest.param(
            [manifest_message(), chunk_message(1, b"abc")], "chunk.index", "expected 0, got 1", id="first-index-not-0"
        ),
        pytest.param(
            [manifest_message(), chunk_message(0, b"abc"), chunk_message(2, b"def")],
            "chunk.index",
            "expected 1, got 2",
            id="out-of-order",
        ),
        pytest.param(
            [manifest_message(), chunk_message(0, b"abc"), chunk_message(0, b"abc")],
            "chunk.index",
            "expected 1, got 0",
            id="repeated-chunk",
        ),
        pytest.param([manifest_message(), chunk_message(0, b"")], "chunk.payload", "must not be empty", id="empty"),
        pytest.param(
            [manifest_message(total_bytes=10), chunk_message(0, b"123456"), chunk_message(1, b"12345")],
            "chunk.payload",
            "11 bytes received, more than manifest.total_bytes (10)",
            id="too-many-bytes",
        ),
        pytest.param(
            [manifest_message(total_bytes=10), chunk_message(0, b"123456")],
            "manifest.total_bytes",
            "stream ended after 6 of 10 bytes",
            id="missing-bytes",
        ),
        pytest.param([manifest_message()], "chunk", "stream ended without chunks", id="no-chunks"),
        pytest.param([], "manifest", "stream ended without a manifest", id="empty-stream"),
    ],
)
def test_bad_weight_stream_is_rejected(messages: list[rollout_pb2.LoadWeightsRequest], field: str, reason: str) -> None:
    validator = WeightStreamValidator()
    with pytest.raises(InvalidRequest) as caught:
        for message in messages:
            validator.feed(message)
        validator.finish()
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.field == field
    assert reason in caught.value.reason


def test_storage_and_stream_share_the_manifest_rules() -> None:
    for bad_manifest in (manifest(version=0), manifest(sha256="A" * 64), manifest(format="")):
        with pytest.raises(InvalidRequest) as from_storage:
            validate_request(LOAD_FROM_STORAGE, valid(LOAD_FROM_STORAGE, manifest=bad_manifest), LIMITS)
        with pytest.raises(InvalidRequest) as from_stream:
            WeightStreamValidator().feed(rollout_pb2.LoadWeightsRequest(manifest=bad_manifest))
        assert str(from_storage.value) == str(from_stream.value)


# --- bounds on pair caps and epochs, run ids (issue #25) ---------------------------------------------------

#: Ids that must never name a folder of the run store: traversal, separators, hidden files, control
#: characters, non-ASCII, too long, and a trailing newline (which `$` alone would let through).
BAD_RUN_IDS = [
    "../escape",
    "..",
    ".",
    "a/b",
    "/abs",
    "a\\b",
    ".hidden",
    "-x",
    "_x",
    "run\n",
    "a\x00b",
    "ü",
    " a",
    "x" * 65,
]
GOOD_RUN_IDS = ["run-1", "a", "A.b_c-9", "x" * 64, "run-20250101-120000-abcdef", "1..2"]


@pytest.mark.parametrize(
    ("method", "overrides", "field", "reason"),
    [
        pytest.param(
            BUILD_PAIRS,
            {"options": reward_pb2.PairOptions(max_pairs_per_prompt=5)},
            "options.max_pairs_per_prompt",
            "must be at most 4 (max_pairs_per_request), got 5",
            id="pair-cap",
        ),
        pytest.param(
            BUILD_PAIRS,
            {"options": reward_pb2.PairOptions(max_pairs_per_prompt=2**32 - 1)},
            "options.max_pairs_per_prompt",
            "max_pairs_per_request",
            id="pair-cap-huge",
        ),
        pytest.param(TRAIN, {"epochs": 17}, "epochs", "must be at most 16 (max_epochs), got 17", id="epochs"),
        pytest.param(TRAIN, {"epochs": 2**32 - 1}, "epochs", "max_epochs", id="epochs-huge"),
    ],
)
def test_unbounded_options_are_bounded(method: str, overrides: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_request(method, valid(method, **overrides), LIMITS)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.field, str(caught.value)) == (field, f"{field}: {caught.value.reason}")
    assert reason in caught.value.reason


@pytest.mark.parametrize(
    ("method", "overrides"),
    [
        (BUILD_PAIRS, {"options": reward_pb2.PairOptions(max_pairs_per_prompt=4)}),
        (BUILD_PAIRS, {"options": reward_pb2.PairOptions(max_pairs_per_prompt=0)}),  # the service's own cap
        (TRAIN, {"epochs": 16}),
        (TRAIN, {"epochs": 0}),  # the trainer's configured default
    ],
)
def test_bounded_options_at_their_limits_pass(method: str, overrides: dict[str, Any]) -> None:
    validate_request(method, valid(method, **overrides), LIMITS)


@pytest.mark.parametrize("method", [START_RUN, *RUN_ID_METHODS])
@pytest.mark.parametrize("run_id", BAD_RUN_IDS)
def test_run_ids_outside_the_slug_are_rejected(method: str, run_id: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        validate_request(method, valid(method, run_id=run_id), LIMITS)
    assert caught.value.field == "run_id"
    assert caught.value.reason.startswith("must be letters, digits, '.', '_' or '-' (not first), at most 64")


@pytest.mark.parametrize("method", [START_RUN, *RUN_ID_METHODS])
@pytest.mark.parametrize("run_id", GOOD_RUN_IDS)
def test_slug_run_ids_pass(method: str, run_id: str) -> None:
    validate_request(method, valid(method, run_id=run_id), LIMITS)
