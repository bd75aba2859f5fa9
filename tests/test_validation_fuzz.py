"""Fuzzing request validation: whatever a client sends, the outcome is a DecodeError (the guard answers
INVALID_ARGUMENT), an InvalidRequest naming a field that exists, or success; never another exception.

Derandomized, so a failure reproduces on every run and in CI.
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import grpc
import hypothesis.strategies as st
from google.protobuf.message import DecodeError, Message
from hypothesis import given, settings

from mpo.services.common.validation import RULES, InvalidRequest, request_type, validate_request
from mpo.v1 import common_pb2, rollout_pb2, trainer_pb2
from tests.test_validation import CORRUPT_PNG, LIMITS, PNG, valid

GENERATE = "/mpo.v1.RolloutService/Generate"
TRAIN = "/mpo.v1.TrainerService/Train"
METHODS = sorted(RULES)
#: Serialized valid requests, the starting points of the byte mutations.
SEEDS = {method: valid(method).SerializeToString() for method in METHODS}


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, derandomize=True, deadline=None, database=None)


def _resolve(message: Message, path: str) -> None:
    """Walk `path` (``prompts[2].images[0].data``) through `message`; fails when a step is not a real field."""
    target: Any = message
    for step in path.split("."):
        name, _, index = step.partition("[")
        assert name in target.DESCRIPTOR.fields_by_name, f"{path}: no field {name!r} in {target.DESCRIPTOR.full_name}"
        target = getattr(target, name)
        if index:
            target = target[int(index.rstrip("]"))]


def outcome(method: str, request: Message) -> InvalidRequest | None:
    """The InvalidRequest raised for `request`, or None; any other exception fails the test."""
    try:
        validate_request(method, request, LIMITS)
    except InvalidRequest as error:
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert str(error) == f"{error.field}: {error.reason}"
        _resolve(request, error.field)
        return error
    return None


def parse_and_validate(method: str, data: bytes) -> None:
    try:
        request = request_type(method).FromString(data)
    except DecodeError:
        return  # what the server's deserializer turns into INVALID_ARGUMENT
    outcome(method, request)


# --- (a) random bytes, (b) damaged serializations of valid requests -----------------------------------------


@fuzz(800)
@given(method=st.sampled_from(METHODS), data=st.binary(max_size=256))
def test_random_bytes(method: str, data: bytes) -> None:
    parse_and_validate(method, data)


@st.composite
def damaged(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid request's bytes after a few truncations, bit flips, insertions and deletions."""
    method = draw(st.sampled_from(METHODS))
    data = bytearray(SEEDS[method])
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        position = draw(st.integers(0, len(data) - 1))
        edit = draw(st.sampled_from(["truncate", "flip", "insert", "delete"]))
        if edit == "truncate":
            del data[position:]
        elif edit == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif edit == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[position : position + draw(st.integers(1, 8))]
    return method, bytes(data)


@fuzz(1500)
@given(damaged())
def test_damaged_serializations(case: tuple[str, bytes]) -> None:
    parse_and_validate(*case)


# --- (c) structured requests with hostile field values, checked against an independent oracle -------------

#: Image sources with known validity under LIMITS, so the oracle needs no decoder of its own.
IMAGES = {
    "png": (common_pb2.Image(data=PNG), True),
    "corrupt-png": (common_pb2.Image(data=CORRUPT_PNG), False),
    "not-an-image": (common_pb2.Image(data=b"\x89PNG\r\n"), False),
    "empty-data": (common_pb2.Image(data=b""), False),
    "too-large": (common_pb2.Image(data=PNG + bytes(LIMITS.max_image_bytes)), False),
    "uri": (common_pb2.Image(uri="file:///data/cat.png"), True),
    "empty-uri": (common_pb2.Image(uri=""), False),
    "unset": (common_pb2.Image(), False),
}
IMAGE_OK = {image.SerializeToString(): ok for image, ok in IMAGES.values()}
GOOD_IMAGES = sorted(name for name, (_, ok) in IMAGES.items() if ok)
T = TypeVar("T")


def mostly(good: st.SearchStrategy[T], bad: st.SearchStrategy[T]) -> st.SearchStrategy[T]:
    """`good` 15 times in 16: with every field hostile at once, only the first rule would ever be reached."""
    return st.sampled_from([True] * 15 + [False]).flatmap(lambda use_good: good if use_good else bad)


def sized(limit: int) -> st.SearchStrategy[int]:
    """Length of a required, bounded list: usually within bounds, sometimes empty or one too many."""
    return mostly(st.integers(1, limit), st.sampled_from([0, limit + 1]))


# Hostile values: empty, whitespace, too long, arbitrary text, NaN and ±inf, huge counts.
hostile_texts = st.sampled_from(["", " ", "\n\t", "x" * (LIMITS.max_question_chars + 1)]) | st.text(max_size=4)
hostile_floats = st.sampled_from([math.nan, math.inf, -math.inf, -0.5, 1.5]) | st.floats(width=32)
hostile_counts = st.integers(0, 2**32 - 1)


@st.composite
def prompts(draw: st.DrawFn, prompt_id: str) -> common_pb2.Prompt:
    question = st.sampled_from(["What is 2 + 3?", "x" * LIMITS.max_question_chars]) | st.text(min_size=1).filter(
        str.strip
    )
    images = draw(
        mostly(
            st.lists(st.sampled_from(GOOD_IMAGES), max_size=LIMITS.max_images_per_prompt),
            st.lists(st.sampled_from(sorted(IMAGES)), max_size=LIMITS.max_images_per_prompt + 1),
        )
    )
    return common_pb2.Prompt(
        id=draw(mostly(st.just(prompt_id), st.sampled_from(["", "p0"]))),
        question=draw(mostly(question, hostile_texts)),
        images=[IMAGES[name][0] for name in images],
        answer=draw(mostly(st.none() | st.sampled_from(["5", "B"]), hostile_texts)),
        choices=draw(mostly(st.lists(st.sampled_from(["4", "5", "six"]), max_size=3), st.lists(hostile_texts))),
        task=draw(mostly(st.sampled_from(LIMITS.known_tasks), st.sampled_from(["", "chess", " arith", "ARITH"]))),
    )


sampling_params = st.builds(
    common_pb2.SamplingParams,
    n=mostly(st.integers(1, LIMITS.max_samples_per_prompt), hostile_counts),
    temperature=mostly(st.floats(0, 2, width=32), hostile_floats),
    top_p=mostly(st.floats(0, 1, width=32), hostile_floats),
    top_k=hostile_counts,
    max_tokens=mostly(st.integers(1, LIMITS.max_tokens), hostile_counts),
    seed=st.none() | st.integers(0, 2**64 - 1),
    stop=mostly(st.lists(st.sampled_from(["\n", "Final answer:"]), max_size=2), st.lists(hostile_texts, max_size=2)),
)


@st.composite
def generate_requests(draw: st.DrawFn) -> rollout_pb2.GenerateRequest:
    count = draw(sized(LIMITS.max_batch_prompts))
    return rollout_pb2.GenerateRequest(
        prompts=[draw(prompts(f"p{i}")) for i in range(count)],
        sampling=draw(mostly(sampling_params, st.none())),
    )


@st.composite
def pairs(draw: st.DrawFn, pair_id: str) -> common_pb2.PreferencePair:
    chosen = draw(mostly(st.just("2 + 3 = 5. Final answer: 5"), st.sampled_from(["", "2 + 3 = 6. Final answer: 6"])))
    return common_pb2.PreferencePair(
        id=draw(mostly(st.just(pair_id), st.sampled_from(["", "x0"]))),
        prompt=draw(mostly(prompts("p0"), st.none())),
        chosen=chosen,
        rejected=draw(mostly(st.just("2 + 3 = 6. Final answer: 6"), st.sampled_from(["", chosen]))),
        source=draw(mostly(st.sampled_from([1, 2]), st.integers(-1, 3) | st.integers(-(2**31), 2**31 - 1))),
    )


@st.composite
def train_requests(draw: st.DrawFn) -> trainer_pb2.TrainRequest:
    count = draw(sized(LIMITS.max_pairs_per_request))
    return trainer_pb2.TrainRequest(
        pairs=[draw(pairs(f"x{i}")) for i in range(count)], round=draw(st.integers(0, 2**64 - 1))
    )


def _unique_nonempty(values: list[str]) -> bool:
    return all(values) and len(set(values)) == len(values)


def _prompt_ok(prompt: common_pb2.Prompt) -> bool:
    return (
        bool(prompt.id)
        and bool(prompt.question.strip())
        and len(prompt.question) <= LIMITS.max_question_chars
        and len(prompt.images) <= LIMITS.max_images_per_prompt
        and all(IMAGE_OK[image.SerializeToString()] for image in prompt.images)
        and (not prompt.HasField("answer") or bool(prompt.answer.strip()))
        and all(choice.strip() for choice in prompt.choices)
        and prompt.task in LIMITS.known_tasks
    )


def _generate_ok(request: rollout_pb2.GenerateRequest) -> bool:
    params = request.sampling
    return (
        1 <= len(request.prompts) <= LIMITS.max_batch_prompts
        and _unique_nonempty([prompt.id for prompt in request.prompts])
        and all(_prompt_ok(prompt) for prompt in request.prompts)
        and request.HasField("sampling")
        and 1 <= params.n <= LIMITS.max_samples_per_prompt
        and math.isfinite(params.temperature)
        and params.temperature >= 0
        and 0 <= params.top_p <= 1
        and 1 <= params.max_tokens <= LIMITS.max_tokens
        and all(params.stop)
    )


def _train_ok(request: trainer_pb2.TrainRequest) -> bool:
    return (
        1 <= len(request.pairs) <= LIMITS.max_pairs_per_request
        and _unique_nonempty([pair.id for pair in request.pairs])
        and all(
            pair.HasField("prompt")
            and _prompt_ok(pair.prompt)
            and pair.chosen
            and pair.rejected
            and pair.chosen != pair.rejected
            and pair.source in (common_pb2.PAIR_SOURCE_CORRECTNESS, common_pb2.PAIR_SOURCE_DROPOUT_NTP)
            for pair in request.pairs
        )
    )


@fuzz(500)
@given(generate_requests())
def test_structured_generate_requests(request: rollout_pb2.GenerateRequest) -> None:
    error = outcome(GENERATE, request)
    assert (error is None) == _generate_ok(request), error


@fuzz(500)
@given(train_requests())
def test_structured_train_requests(request: trainer_pb2.TrainRequest) -> None:
    error = outcome(TRAIN, request)
    assert (error is None) == _train_ok(request), error
