"""Fuzzing request validation: whatever a client sends, the outcome is a DecodeError (the guard answers
INVALID_ARGUMENT), an InvalidRequest naming a field that exists, or success; never another exception.

Derandomized, so a failure reproduces on every run and in CI.
"""

from __future__ import annotations

import math
import os
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
import hypothesis.strategies as st
import pytest
from google.protobuf.message import DecodeError, Message
from hypothesis import given, settings
from prometheus_client import CollectorRegistry

from mpo.config import ControllerConfig, DataConfig, RunConfig
from mpo.data.records import PromptRecord
from mpo.embedded import own_data_roots
from mpo.services.controller.metrics import RoundGauges
from mpo.services.controller.runs import RunManager, check_data_paths, check_image_paths
from mpo.services.controller.store import RunStore
from mpo.serving.paths import resolved_roots
from mpo.serving.validation import (
    GREEDY_TEMPERATURE,
    RULES,
    InvalidRequest,
    WeightStreamValidator,
    request_type,
    validate_request,
)
from mpo.v1 import common_pb2, reward_pb2, rollout_pb2, trainer_pb2
from tests.test_validation import CORRUPT_PNG, LIMITS, PNG, START_RUN, valid

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


def sampling_strategy(n: st.SearchStrategy[int]) -> st.SearchStrategy[common_pb2.SamplingParams]:
    good_stops = st.lists(st.sampled_from(["\n", "Final answer:"]), max_size=2)
    bad_stops = st.lists(hostile_texts | st.just("x" * (LIMITS.max_stop_chars + 1)), max_size=2) | st.just(
        ["\n"] * (LIMITS.max_stop_strings + 1)
    )
    return st.builds(
        common_pb2.SamplingParams,
        n=n,
        temperature=mostly(st.floats(0, 2, width=32), hostile_floats),
        top_p=mostly(st.floats(0, 1, width=32), hostile_floats),
        top_k=hostile_counts,
        max_tokens=mostly(st.integers(0, LIMITS.max_tokens), hostile_counts),
        seed=st.none() | st.integers(0, 2**64 - 1),
        stop=mostly(good_stops, bad_stops),
    )


sampling_params = sampling_strategy(mostly(st.integers(1, LIMITS.max_samples_per_prompt), hostile_counts))


@st.composite
def generate_requests(draw: st.DrawFn) -> rollout_pb2.GenerateRequest:
    count = draw(sized(LIMITS.max_batch_prompts))
    return rollout_pb2.GenerateRequest(
        prompts=[draw(prompts(f"p{i}")) for i in range(count)],
        sampling=draw(mostly(sampling_params, st.none())),
    )


@st.composite
def pairs(draw: st.DrawFn, pair_id: str) -> common_pb2.PreferencePair:
    """Half carry their prompt, half name one of the request's `prompts` (p0, p1) by id."""
    chosen = draw(mostly(st.just("2 + 3 = 5. Final answer: 5"), st.sampled_from(["", "2 + 3 = 6. Final answer: 6"])))
    by_id = draw(st.booleans())
    return common_pb2.PreferencePair(
        id=draw(mostly(st.just(pair_id), st.sampled_from(["", "x0"]))),
        prompt=None if by_id else draw(mostly(prompts("p0"), st.none())),
        prompt_id=draw(mostly(st.sampled_from(["p0", "p1"]) if by_id else st.just(""), st.sampled_from(["p0", "p9"]))),
        chosen=chosen,
        rejected=draw(mostly(st.just("2 + 3 = 6. Final answer: 6"), st.sampled_from(["", chosen]))),
        source=draw(mostly(st.sampled_from([1, 2]), st.integers(-1, 3) | st.integers(-(2**31), 2**31 - 1))),
    )


@st.composite
def train_requests(draw: st.DrawFn) -> trainer_pb2.TrainRequest:
    count = draw(sized(LIMITS.max_pairs_per_request))
    return trainer_pb2.TrainRequest(
        pairs=[draw(pairs(f"x{i}")) for i in range(count)],
        prompts=[draw(prompts(f"p{j}")) for j in range(draw(st.integers(0, 2)))],
        round=draw(st.integers(0, 2**64 - 1)),
        epochs=draw(mostly(st.integers(0, LIMITS.max_epochs), hostile_counts)),
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


def _sampling_ok(request: rollout_pb2.GenerateRequest | rollout_pb2.ContinueRequest) -> bool:
    params = request.sampling
    return (
        request.HasField("sampling")
        and 1 <= params.n <= LIMITS.max_samples_per_prompt
        and math.isfinite(params.temperature)
        and params.temperature >= 0
        and (params.n == 1 or params.temperature >= GREEDY_TEMPERATURE)
        and 0 <= params.top_p <= 1
        and params.max_tokens <= LIMITS.max_tokens
        and len(params.stop) <= LIMITS.max_stop_strings
        and all(0 < len(stop) <= LIMITS.max_stop_chars for stop in params.stop)
    )


def _prompts_ok(prompts: Sequence[common_pb2.Prompt]) -> bool:
    return (
        1 <= len(prompts) <= LIMITS.max_batch_prompts
        and _unique_nonempty([prompt.id for prompt in prompts])
        and all(_prompt_ok(prompt) for prompt in prompts)
    )


def _generate_ok(request: rollout_pb2.GenerateRequest) -> bool:
    return _prompts_ok(request.prompts) and _sampling_ok(request)


def _train_ok(request: trainer_pb2.TrainRequest) -> bool:
    prompt_ids = [prompt.id for prompt in request.prompts]
    return (
        1 <= len(request.pairs) <= LIMITS.max_pairs_per_request
        and _unique_nonempty([pair.id for pair in request.pairs])
        and len(request.prompts) <= len(request.pairs)
        and _unique_nonempty(prompt_ids)
        and all(_prompt_ok(prompt) for prompt in request.prompts)
        and set(prompt_ids) <= {pair.prompt_id for pair in request.pairs}
        and all(
            (
                (pair.HasField("prompt") and not pair.prompt_id and _prompt_ok(pair.prompt))
                or (not pair.HasField("prompt") and pair.prompt_id in prompt_ids)
            )
            and pair.chosen
            and pair.rejected
            and pair.chosen != pair.rejected
            and pair.source in (common_pb2.PAIR_SOURCE_CORRECTNESS, common_pb2.PAIR_SOURCE_DROPOUT_NTP)
            for pair in request.pairs
        )
        and request.epochs <= LIMITS.max_epochs
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


# --- (d) Continue, Score and BuildPairs, with their options (issue #25) --------------------------------------

CONTINUE = "/mpo.v1.RolloutService/Continue"
SCORE = "/mpo.v1.RewardService/Score"
BUILD_PAIRS = "/mpo.v1.RewardService/BuildPairs"


@st.composite
def continue_requests(draw: st.DrawFn) -> rollout_pb2.ContinueRequest:
    prefixes = mostly(
        st.sampled_from(["2 + 3 is", "x" * LIMITS.max_prefix_chars]),
        st.sampled_from(["", "x" * (LIMITS.max_prefix_chars + 1)]),
    )
    continuations = [
        rollout_pb2.Continuation(
            prompt=draw(mostly(prompts("p0"), st.none())), prefix=draw(prefixes), drop_images=draw(st.booleans())
        )
        for _ in range(draw(sized(LIMITS.max_batch_prompts)))
    ]
    sampling = sampling_strategy(mostly(st.just(1), hostile_counts))
    return rollout_pb2.ContinueRequest(continuations=continuations, sampling=draw(mostly(sampling, st.none())))


def _continue_ok(request: rollout_pb2.ContinueRequest) -> bool:
    return (
        1 <= len(request.continuations) <= LIMITS.max_batch_prompts
        and all(
            continuation.HasField("prompt")
            and _prompt_ok(continuation.prompt)
            and 0 < len(continuation.prefix) <= LIMITS.max_prefix_chars
            for continuation in request.continuations
        )
        and _sampling_ok(request)
        and request.sampling.n == 1
    )


@fuzz(400)
@given(continue_requests())
def test_structured_continue_requests(request: rollout_pb2.ContinueRequest) -> None:
    error = outcome(CONTINUE, request)
    assert (error is None) == _continue_ok(request), error


pair_options = st.builds(
    reward_pb2.PairOptions,
    max_pairs_per_prompt=mostly(st.integers(0, LIMITS.max_pairs_per_request), hostile_counts),
    seed=st.integers(0, 2**64 - 1),
    dropout_prefix_fraction=mostly(st.floats(0, 1, exclude_max=True, width=32), hostile_floats),
)


@st.composite
def build_pairs_requests(draw: st.DrawFn) -> reward_pb2.BuildPairsRequest:
    batch = [draw(prompts(f"p{i}")) for i in range(draw(sized(LIMITS.max_batch_prompts)))]
    ids = st.sampled_from([prompt.id for prompt in batch] or ["p0"])
    samples = [
        common_pb2.Sample(
            prompt_id=draw(mostly(ids, st.sampled_from(["", "elsewhere"]))),
            index=draw(mostly(st.just(i), st.integers(0, 2))),
            text=draw(st.sampled_from(["2 + 3 = 5. Final answer: 5", "", "Final answer: 6"])),
        )
        for i in range(draw(sized(LIMITS.max_samples_per_request)))
    ]
    return reward_pb2.BuildPairsRequest(
        prompts=batch, samples=samples, round=draw(st.integers(0, 2**64 - 1)), options=draw(st.none() | pair_options)
    )


def _score_ok(request: reward_pb2.ScoreRequest | reward_pb2.BuildPairsRequest) -> bool:
    ids = {prompt.id for prompt in request.prompts}
    keys = [(sample.prompt_id, sample.index) for sample in request.samples]
    return (
        _prompts_ok(request.prompts)
        and 1 <= len(request.samples) <= LIMITS.max_samples_per_request
        and all(sample.prompt_id in ids and sample.prompt_id for sample in request.samples)
        and len(set(keys)) == len(keys)
    )


def _build_pairs_ok(request: reward_pb2.BuildPairsRequest) -> bool:
    options = request.options
    return (
        _score_ok(request)
        and options.max_pairs_per_prompt <= LIMITS.max_pairs_per_request
        and math.isfinite(options.dropout_prefix_fraction)
        and 0 <= options.dropout_prefix_fraction < 1
    )


@fuzz(400)
@given(build_pairs_requests())
def test_structured_score_and_build_pairs_requests(request: reward_pb2.BuildPairsRequest) -> None:
    score = reward_pb2.ScoreRequest(prompts=request.prompts, samples=request.samples)
    error = outcome(SCORE, score)
    assert (error is None) == _score_ok(score), error
    error = outcome(BUILD_PAIRS, request)
    assert (error is None) == _build_pairs_ok(request), error


# --- (e) the LoadWeights stream: whatever arrives, InvalidRequest or a stream the manifest describes --------


def manifest_message(total_bytes: int) -> rollout_pb2.LoadWeightsRequest:
    manifest = rollout_pb2.WeightManifest(
        version=3, tensor_count=2, total_bytes=total_bytes, sha256="ab" * 32, format="safetensors"
    )
    return rollout_pb2.LoadWeightsRequest(manifest=manifest)


@st.composite
def weight_streams(draw: st.DrawFn) -> list[rollout_pb2.LoadWeightsRequest]:
    """A well-formed stream (manifest, then chunks adding up to its size), often damaged: messages dropped,
    repeated, swapped or replaced, indexes and sizes changed, hostile manifests."""
    payloads = draw(st.lists(st.binary(min_size=1, max_size=6), min_size=1, max_size=5))
    total = sum(map(len, payloads))
    stream = [manifest_message(draw(mostly(st.just(total), st.integers(0, total + 3))))]
    stream += [
        rollout_pb2.LoadWeightsRequest(chunk=rollout_pb2.WeightChunk(index=i, payload=p))
        for i, p in enumerate(payloads)
    ]
    hostile = st.sampled_from(
        [
            rollout_pb2.LoadWeightsRequest(),
            manifest_message(total),
            rollout_pb2.LoadWeightsRequest(manifest=rollout_pb2.WeightManifest()),
            rollout_pb2.LoadWeightsRequest(chunk=rollout_pb2.WeightChunk(index=0, payload=b"")),
            rollout_pb2.LoadWeightsRequest(chunk=rollout_pb2.WeightChunk(index=2**32 - 1, payload=b"x")),
        ]
    )
    for _ in range(draw(st.sampled_from([0, 0, 1, 2, 3]))):
        position = draw(st.integers(0, len(stream)))
        edit = draw(st.sampled_from(["drop", "repeat", "swap", "insert", "reindex"]))
        if edit == "insert" or not stream:
            stream.insert(position, draw(hostile))
            continue
        position = min(position, len(stream) - 1)
        if edit == "drop":
            del stream[position]
        elif edit == "repeat":
            stream.insert(position, stream[position])
        elif edit == "swap" and position + 1 < len(stream):
            stream[position], stream[position + 1] = stream[position + 1], stream[position]
        elif edit == "reindex" and stream[position].HasField("chunk"):
            changed = rollout_pb2.LoadWeightsRequest()
            changed.CopyFrom(stream[position])
            changed.chunk.index = draw(st.integers(0, 6))
            stream[position] = changed
    return stream


@fuzz(1500)
@given(weight_streams())
def test_weight_streams(stream: list[rollout_pb2.LoadWeightsRequest]) -> None:
    validator = WeightStreamValidator()
    try:
        for message in stream:
            validator.feed(message)
        validator.finish()
    except InvalidRequest as error:
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT and str(error) == f"{error.field}: {error.reason}"
        return
    # Accepted: one manifest first, then chunks 0, 1, ... of non-empty payloads adding up to its size.
    manifest, chunks = stream[0], stream[1:]
    assert manifest.HasField("manifest") and all(message.HasField("chunk") for message in chunks)
    assert [message.chunk.index for message in chunks] == list(range(len(chunks)))
    assert all(message.chunk.payload for message in chunks)
    assert sum(len(message.chunk.payload) for message in chunks) == manifest.manifest.total_bytes


# --- (f) run ids and data paths: nothing a client names reaches outside the controller's folders -------------

SLUG_START = string.ascii_letters + string.digits
RUN_ID_METHODS = [START_RUN] + [
    f"/mpo.v1.ControllerService/{name}"
    for name in ("PauseRun", "ResumeRun", "StopRun", "GetRun", "ListRounds", "WatchRounds")
]
run_ids = (
    st.text(alphabet=st.sampled_from([*"aZ09._-", "/", "\\", "\x00", "\n", " ", "ü", ":", "~"]), max_size=70)
    | st.sampled_from(["..", "../x", "a/../..", ".", "x" * 64, "x" * 65, "run-1", "a..b"])
    | st.text(max_size=8)
)


def _slug(run_id: str) -> bool:
    return 1 <= len(run_id) <= 64 and run_id[0] in SLUG_START and all(c in SLUG_START + "._-" for c in run_id)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> RunManager:
    """A controller's run manager over a fresh store; no service is ever called."""
    store = RunStore(tmp_path_factory.mktemp("store"))
    return RunManager(store, None, ControllerConfig(), RoundGauges(CollectorRegistry()))  # type: ignore[arg-type]


@fuzz(1500)
@given(method=st.sampled_from(RUN_ID_METHODS), run_id=run_ids)
def test_run_ids(runs: RunManager, method: str, run_id: str) -> None:
    error = outcome(method, valid(method, run_id=run_id))
    expected = _slug(run_id) or (method == START_RUN and not run_id)  # StartRun generates an empty one
    assert (error is None) == expected, error
    if error is None and run_id:
        folder = (runs.store.root / "runs").resolve()
        for path in (runs.store.pairs_folder(run_id), runs.tensorboard_dir(run_id), runs.wandb_dir(run_id)):
            assert path.resolve().is_relative_to(folder / run_id) and folder / run_id != folder


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/ (the root) and outside/, with links out of, within and back into the root."""
    top = tmp_path_factory.mktemp("paths")
    for folder in ("data/inner", "outside"):
        (top / folder).mkdir(parents=True)
    for folder in ("data", "data/inner", "outside"):
        (top / folder / "x.jsonl").write_text("{}\n")
    (top / "data" / "out").symlink_to(top / "outside")
    (top / "data" / "in").symlink_to(top / "data" / "inner")
    (top / "outside" / "back").symlink_to(top / "data")
    (top / "data" / "loop").symlink_to(top / "data" / "loop")
    return top


segments = st.lists(
    st.sampled_from(["..", ".", "data", "inner", "outside", "out", "in", "back", "loop", "nope", "x.jsonl"]), max_size=6
)


@fuzz(800)
@given(parts=segments, from_top=st.booleans())
def test_data_paths(tree: Path, parts: list[str], from_top: bool) -> None:
    """A prompt file is refused whenever the real file it names lies outside the data roots, existing or
    not, and accepted when it lies inside; every refusal reads the same, so a client learns nothing of what
    lies outside. (Paths through a symlink loop name no file: either answer is safe.)"""
    root = (tree / "data").resolve()
    path = (tree if from_top else tree / "data").joinpath(*parts)
    real = Path(os.path.realpath(path))
    try:
        check_data_paths(DataConfig(train=path, heldout=root / "x.jsonl"), resolved_roots([tree / "data"]))
    except InvalidRequest as error:
        assert not real.is_relative_to(root) or "loop" in real.parts, path
        assert (
            str(error)
            == f"config_yaml: data.train: outside the controller's data roots ({root}; controller.data_roots)"
        )
        return
    assert real.is_relative_to(root), path


def test_images_named_by_rows_lie_in_the_roots_too(tree: Path) -> None:
    roots = resolved_roots([tree / "data"])
    record = PromptRecord(id="q", question="?", task="shapes", images=[tree / "data" / "in" / "x.jsonl"])
    check_image_paths("train", [record], roots)
    for outside in (tree / "data" / "out" / "x.jsonl", tree / "outside" / "nope.png", Path("/etc/passwd")):
        with pytest.raises(InvalidRequest) as caught:
            check_image_paths("heldout", [record, record.model_copy(update={"id": "r", "images": [outside]})], roots)
        assert str(caught.value).startswith("config_yaml: data.heldout: prompt 'r': image outside the controller's")


def test_embedded_runs_read_their_own_data_and_nothing_beside(tree: Path) -> None:
    """`mpo run`: the folders of the local user's own prompt files and images are the controller's roots."""
    data, inner, outside = (tree / "data").resolve(), (tree / "data" / "inner").resolve(), (tree / "outside").resolve()
    config = RunConfig.model_validate({"data": {"train": str(data / "x.jsonl"), "heldout": str(inner)}})
    record = PromptRecord(id="q", question="?", task="shapes", images=[outside / "x.jsonl"])
    roots = own_data_roots(config, [record]).controller.data_roots
    assert sorted(roots) == sorted({data, inner, outside})
    stranger = record.model_copy(update={"id": "s", "images": [tree / "x.jsonl"]})
    with pytest.raises(InvalidRequest, match="prompt 's': image outside"):
        check_image_paths("train", [stranger], resolved_roots(roots))
