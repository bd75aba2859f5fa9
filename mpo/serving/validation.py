"""Request validation for every gRPC service, in the one layer the server interceptor calls.

Handlers can then trust their inputs: the bounds of `RequestLimits` and the rules written in the .proto
comments are checked here once, and each violation names the exact field (``prompts[2].images[0].data``)
so a client can fix its request without reading server logs.

Adding rules for a new method means adding one function and one entry to `RULES`.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Container, Hashable, Sequence, Sized
from functools import cache
from typing import Any

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import Message
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from mpo.config import GREEDY_TEMPERATURE, RUN_ID_PATTERN, RequestLimits
from mpo.data.meta import decode_meta
from mpo.v1 import common_pb2, controller_pb2, reward_pb2, rollout_pb2, trainer_pb2

#: Longest client-supplied text quoted in an error: reasons travel in the size-limited grpc-message trailer.
_QUOTED_CHARS = 60
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_RUN_ID = re.compile(RUN_ID_PATTERN)
WEIGHT_FORMAT = "safetensors"


class InvalidRequest(Exception):
    """A request field breaks a rule; the interceptor turns it into a status with `code` and `str(self)`."""

    def __init__(self, field: str, reason: str, code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
        self.code = code

    def __reduce__(self) -> tuple[type[InvalidRequest], tuple[str, str, grpc.StatusCode]]:
        # Keeps the exception intact when it crosses a process boundary (Ray actors pickle errors).
        return (InvalidRequest, (self.field, self.reason, self.code))


# --- field helpers: each checks one kind of value and names the field on failure ---------------------------


def _shorten(text: str) -> str:
    return text if len(text) <= _QUOTED_CHARS else text[:_QUOTED_CHARS] + "…"


def _quote(text: str) -> str:
    return repr(_shorten(text))


def _check_present(message: Message, name: str, field: str) -> None:
    """A message field the method cannot do without (HasField: an all-default message still counts as set)."""
    if not message.HasField(name):
        raise InvalidRequest(field, "required")


def _check_nonempty(text: str, field: str) -> None:
    if not text:
        raise InvalidRequest(field, "must not be empty")


def _check_not_blank(text: str, field: str) -> None:
    """For human text (questions, answers): whitespace alone carries nothing to answer or judge."""
    if not text.strip():
        raise InvalidRequest(field, "must not be empty or whitespace only")


def _check_at_least(value: int, field: str, low: int) -> None:
    if value < low:
        raise InvalidRequest(field, f"must be >= {low}, got {value}")


def _check_at_most(value: int, field: str, limit: int, limit_name: str) -> None:
    if value > limit:
        raise InvalidRequest(field, f"must be at most {limit} ({limit_name}), got {value}")


def _check_chars(text: str, field: str, limit: int, limit_name: str) -> None:
    if len(text) > limit:
        raise InvalidRequest(field, f"at most {limit} characters ({limit_name}), got {len(text)}")


def _check_count(items: Sized, field: str, limit: int, limit_name: str, *, required: bool = True) -> None:
    """A repeated field: non-empty (when required) and no longer than its limit, so one call stays bounded."""
    if required and len(items) == 0:
        raise InvalidRequest(field, "must not be empty")
    if len(items) > limit:
        raise InvalidRequest(field, f"at most {limit} allowed ({limit_name}), got {len(items)}")


def _check_unique(key: Hashable, field: str, seen: dict[Hashable, str], what: str) -> None:
    """Record `key` at `field`; a repeat names the field that used it first."""
    first = seen.setdefault(key, field)
    if first != field:
        raise InvalidRequest(field, f"duplicate {what}; already used at {first}")


def _check_float(value: float, field: str, low: float, high: float = math.inf, *, high_open: bool = False) -> None:
    """`value` in [low, high] (or [low, high) when `high_open`); NaN and infinities never pass."""
    if not math.isfinite(value):
        raise InvalidRequest(field, f"must be a finite number, got {value}")
    if value < low or value > high or (high_open and value == high):
        if high == math.inf:
            raise InvalidRequest(field, f"must be >= {low:g}, got {value:g}")
        raise InvalidRequest(field, f"must be in [{low:g}, {high:g}{')' if high_open else ']'}, got {value:g}")


def _check_enum(message: Message, name: str, field: str) -> None:
    """Set, and a value this build knows (proto3 enums accept any int from the wire)."""
    enum = message.DESCRIPTOR.fields_by_name[name].enum_type
    value: int = getattr(message, name)
    if value == 0:
        raise InvalidRequest(field, f"must be set (not {enum.values_by_number[0].name})")
    if value not in enum.values_by_number:
        raise InvalidRequest(field, f"unknown value {value}")


def error_text(error: BaseException) -> str:
    """`Type: message` of an error that client input caused, short enough for the status trailer."""
    return f"{type(error).__name__}: {_shorten(str(error))}"


def _undecodable_reason(data: bytes, max_pixels: int) -> str | None:
    """Why `data` is no image a service may decode, or None.

    The canvas (width x height x frames) is read from the header and checked against `max_pixels`
    before anything is decompressed: a few KB of PNG can declare 13k x 13k pixels, half a GB per decode.
    `verify` then checks the file's structure (chunk CRCs) without decoding pixels. PIL's own bomb guard
    stays on: at open it refuses canvases past twice its MAX_IMAGE_PIXELS (about 179 M pixels, far above
    the default cap), so whatever the cap, nothing larger than it is ever decoded. Catching everything is
    deliberate: PIL's plugins raise OSError, SyntaxError, ValueError, struct.error, ... on hostile bytes.
    """
    try:
        with PILImage.open(io.BytesIO(data)) as image:
            frames = getattr(image, "n_frames", 1)
            pixels = image.width * image.height * frames
            if pixels > max_pixels:
                canvas = f"{image.width}x{image.height}" + (f" x {frames} frames" if frames > 1 else "")
                return f"image of {canvas} = {pixels} pixels, at most {max_pixels} (max_image_pixels)"
            image.verify()
    except UnidentifiedImageError:
        return "undecodable image (not an image format PIL can read)"
    except Exception as exc:
        return f"undecodable image ({error_text(exc)})"
    return None


def check_image_bytes(data: bytes, field: str, limits: RequestLimits) -> None:
    """Encoded image bytes: not empty, within the byte and pixel caps, readable by PIL. Shared by request
    validation (`Image.data`) and the rollout service, which reads `Image.uri` files itself."""
    _check_nonempty(data, field)
    if len(data) > limits.max_image_bytes:
        raise InvalidRequest(
            field, f"image of {len(data)} bytes, at most {limits.max_image_bytes} bytes (max_image_bytes)"
        )
    problem = _undecodable_reason(data, limits.max_image_pixels)
    if problem is not None:
        raise InvalidRequest(field, problem)


# --- message helpers: one per shared message type ----------------------------------------------------------


def _check_image(image: common_pb2.Image, field: str, limits: RequestLimits) -> None:
    source = image.WhichOneof("source")
    if source is None:
        raise InvalidRequest(field, "must set data or uri")
    if source == "uri":  # read, and checked like `data`, by the service that reads it (it knows its roots)
        _check_nonempty(image.uri, f"{field}.uri")
        return
    check_image_bytes(image.data, f"{field}.data", limits)


def _check_prompt(prompt: common_pb2.Prompt, field: str, limits: RequestLimits) -> None:
    """One prompt on its own; id uniqueness depends on the request and is checked by the caller."""
    _check_nonempty(prompt.id, f"{field}.id")
    _check_not_blank(prompt.question, f"{field}.question")
    _check_chars(prompt.question, f"{field}.question", limits.max_question_chars, "max_question_chars")
    _check_count(
        prompt.images, f"{field}.images", limits.max_images_per_prompt, "max_images_per_prompt", required=False
    )
    for i, image in enumerate(prompt.images):
        _check_image(image, f"{field}.images[{i}]", limits)
    if prompt.HasField("answer"):
        _check_not_blank(prompt.answer, f"{field}.answer")
    for i, choice in enumerate(prompt.choices):
        _check_not_blank(choice, f"{field}.choices[{i}]")
    _check_nonempty(prompt.task, f"{field}.task")
    if prompt.task not in limits.known_tasks:
        known = ", ".join(sorted(limits.known_tasks))
        raise InvalidRequest(f"{field}.task", f"unknown task {_quote(prompt.task)} (known tasks: {known})")
    _check_meta(prompt.meta_json, f"{field}.meta_json", limits)


def _check_meta(text: str, field: str, limits: RequestLimits) -> None:
    """Bounded in bytes before it is parsed, then one JSON object a verifier can use."""
    size = len(text.encode())
    if size > limits.max_meta_bytes:
        raise InvalidRequest(field, f"at most {limits.max_meta_bytes} bytes (max_meta_bytes), got {size}")
    try:
        decode_meta(text)
    except ValueError as error:
        raise InvalidRequest(field, str(error)) from None


def _check_prompts(prompts: Sequence[common_pb2.Prompt], limits: RequestLimits) -> None:
    """The `prompts` list of Generate, GenerateStream, Score and BuildPairs; ids are unique within it."""
    _check_count(prompts, "prompts", limits.max_batch_prompts, "max_batch_prompts")
    seen: dict[Hashable, str] = {}
    for i, prompt in enumerate(prompts):
        _check_prompt(prompt, f"prompts[{i}]", limits)
        _check_unique(prompt.id, f"prompts[{i}].id", seen, f"prompt id {_quote(prompt.id)}")


def _check_sampling(
    request: rollout_pb2.GenerateRequest | rollout_pb2.GenerateStreamRequest | rollout_pb2.ContinueRequest,
    limits: RequestLimits,
) -> common_pb2.SamplingParams:
    """The request's required `sampling` field; returned so callers can add method-specific rules.

    `top_k` needs no rule: it is unsigned, and values at or past the vocabulary size mean "off" in both
    engines. `max_tokens` 0 means "unset" (the rollout service resolves it once the prompts are rendered).
    """
    _check_present(request, "sampling", "sampling")
    params = request.sampling
    _check_at_least(params.n, "sampling.n", 1)
    _check_at_most(params.n, "sampling.n", limits.max_samples_per_prompt, "max_samples_per_prompt")
    _check_decoding(params, "sampling", limits)
    if params.n > 1 and params.temperature < GREEDY_TEMPERATURE:
        raise InvalidRequest(
            "sampling.n",
            f"must be 1 with greedy decoding (temperature below {GREEDY_TEMPERATURE:g}), got {params.n}: greedy "
            "decoding gives n identical samples; set temperature > 0 to draw several",
        )
    _check_at_most(params.max_tokens, "sampling.max_tokens", limits.max_tokens, "max_tokens")
    return params


def _check_decoding(params: common_pb2.SamplingParams, field: str, limits: RequestLimits) -> None:
    """How tokens are drawn and where sampling stops: the rules shared by a request's own sampling and the
    DropoutNTP sampling a BuildPairs request passes on."""
    _check_float(params.temperature, f"{field}.temperature", 0.0)
    _check_float(params.top_p, f"{field}.top_p", 0.0, 1.0)
    _check_count(params.stop, f"{field}.stop", limits.max_stop_strings, "max_stop_strings", required=False)
    for i, stop in enumerate(params.stop):
        _check_nonempty(stop, f"{field}.stop[{i}]")
        _check_chars(stop, f"{field}.stop[{i}]", limits.max_stop_chars, "max_stop_chars")


def _check_samples(
    samples: Sequence[common_pb2.Sample], prompts: Sequence[common_pb2.Prompt], limits: RequestLimits
) -> None:
    """Samples to judge: each belongs to a prompt of the same request and appears once."""
    _check_count(samples, "samples", limits.max_samples_per_request, "max_samples_per_request")
    prompt_ids = {prompt.id for prompt in prompts}
    seen: dict[Hashable, str] = {}
    for i, sample in enumerate(samples):
        field = f"samples[{i}]"
        _check_nonempty(sample.prompt_id, f"{field}.prompt_id")
        if sample.prompt_id not in prompt_ids:
            raise InvalidRequest(f"{field}.prompt_id", f"no prompt with id {_quote(sample.prompt_id)} in this request")
        what = f"sample (prompt_id {_quote(sample.prompt_id)}, index {sample.index})"
        _check_unique((sample.prompt_id, sample.index), f"{field}.index", seen, what)


def _check_pair(
    pair: common_pb2.PreferencePair, field: str, limits: RequestLimits, prompt_ids: Container[Hashable]
) -> None:
    """One pair; its prompt is inline (checked here) or one of `prompt_ids` (checked once by the caller)."""
    _check_nonempty(pair.id, f"{field}.id")
    if pair.HasField("prompt"):
        if pair.prompt_id:
            raise InvalidRequest(f"{field}.prompt_id", "set either prompt or prompt_id, not both")
        _check_prompt(pair.prompt, f"{field}.prompt", limits)
    elif not pair.prompt_id:
        raise InvalidRequest(f"{field}.prompt", "required (or prompt_id naming one of prompts)")
    elif pair.prompt_id not in prompt_ids:
        raise InvalidRequest(f"{field}.prompt_id", f"no prompt with id {_quote(pair.prompt_id)} in prompts")
    _check_nonempty(pair.chosen, f"{field}.chosen")
    _check_nonempty(pair.rejected, f"{field}.rejected")
    if pair.chosen == pair.rejected:
        raise InvalidRequest(f"{field}.rejected", "must differ from chosen (an equal pair has no preference)")
    _check_enum(pair, "source", f"{field}.source")


def _check_manifest(manifest: rollout_pb2.WeightManifest, field: str) -> None:
    """Shared by LoadWeights (streamed) and LoadWeightsFromStorage."""
    _check_at_least(manifest.version, f"{field}.version", 1)
    _check_at_least(manifest.tensor_count, f"{field}.tensor_count", 1)
    _check_at_least(manifest.total_bytes, f"{field}.total_bytes", 1)
    if not _SHA256_HEX.fullmatch(manifest.sha256):
        raise InvalidRequest(f"{field}.sha256", f"must be 64 lowercase hex characters, got {_quote(manifest.sha256)}")
    if manifest.format != WEIGHT_FORMAT:
        raise InvalidRequest(f"{field}.format", f"must be {WEIGHT_FORMAT!r}, got {_quote(manifest.format)}")


# --- per-method rules -----------------------------------------------------------------------------------------


def _check_generate(
    request: rollout_pb2.GenerateRequest | rollout_pb2.GenerateStreamRequest, limits: RequestLimits
) -> None:
    _check_prompts(request.prompts, limits)
    _check_sampling(request, limits)


def _check_continue(request: rollout_pb2.ContinueRequest, limits: RequestLimits) -> None:
    """Prompt ids may repeat here: one prompt can be continued from several prefixes, answered in order."""
    _check_count(request.continuations, "continuations", limits.max_batch_prompts, "max_batch_prompts")
    for i, continuation in enumerate(request.continuations):
        field = f"continuations[{i}]"
        _check_present(continuation, "prompt", f"{field}.prompt")
        _check_prompt(continuation.prompt, f"{field}.prompt", limits)
        _check_nonempty(continuation.prefix, f"{field}.prefix")
        _check_chars(continuation.prefix, f"{field}.prefix", limits.max_prefix_chars, "max_prefix_chars")
        least, most = continuation.min_total_tokens, continuation.max_total_tokens
        if most and least > most:
            raise InvalidRequest(f"{field}.min_total_tokens", f"must be at most max_total_tokens ({most}), got {least}")
    params = _check_sampling(request, limits)
    if params.n != 1:
        raise InvalidRequest("sampling.n", f"must be 1 for Continue (one sample per continuation), got {params.n}")


def _check_load_weights_from_storage(request: rollout_pb2.LoadWeightsFromStorageRequest, limits: RequestLimits) -> None:
    _check_present(request, "manifest", "manifest")
    _check_manifest(request.manifest, "manifest")
    _check_nonempty(request.uri, "uri")


def _check_score(request: reward_pb2.ScoreRequest | reward_pb2.BuildPairsRequest, limits: RequestLimits) -> None:
    _check_prompts(request.prompts, limits)
    _check_samples(request.samples, request.prompts, limits)


def _check_build_pairs(request: reward_pb2.BuildPairsRequest, limits: RequestLimits) -> None:
    """The pair cap is bounded like a Train call (0: the service's own cap): the pairs must fit one anyway."""
    _check_score(request, limits)
    options = request.options
    cap, cap_field = options.max_pairs_per_prompt, "options.max_pairs_per_prompt"
    _check_at_most(cap, cap_field, limits.max_pairs_per_request, "max_pairs_per_request")
    _check_float(options.dropout_prefix_fraction, "options.dropout_prefix_fraction", 0.0, 1.0, high_open=True)
    _check_decoding(options.dropout_sampling, "options.dropout_sampling", limits)


def check_pairs(
    pairs: Sequence[common_pb2.PreferencePair], prompts: Sequence[common_pb2.Prompt], limits: RequestLimits
) -> None:
    """Pairs with the prompts they name by id (TrainRequest, BuildPairsResponse). Counted before any image
    is read, and each prompt checked once however many pairs name it: a prompt's images cost once."""
    _check_count(pairs, "pairs", limits.max_pairs_per_request, "max_pairs_per_request")
    if len(prompts) > len(pairs):
        raise InvalidRequest("prompts", f"at most one per pair ({len(pairs)}), got {len(prompts)}")
    prompt_fields: dict[Hashable, str] = {}
    for j, prompt in enumerate(prompts):
        _check_prompt(prompt, f"prompts[{j}]", limits)
        _check_unique(prompt.id, f"prompts[{j}].id", prompt_fields, f"prompt id {_quote(prompt.id)}")
    seen: dict[Hashable, str] = {}
    for i, pair in enumerate(pairs):
        _check_pair(pair, f"pairs[{i}]", limits, prompt_fields)
        _check_unique(pair.id, f"pairs[{i}].id", seen, f"pair id {_quote(pair.id)}")
    named = {pair.prompt_id for pair in pairs}
    for j, prompt in enumerate(prompts):
        if prompt.id not in named:
            raise InvalidRequest(f"prompts[{j}]", f"no pair names prompt id {_quote(prompt.id)}")


def _check_train(request: trainer_pb2.TrainRequest, limits: RequestLimits) -> None:
    check_pairs(request.pairs, request.prompts, limits)
    _check_at_most(request.epochs, "epochs", limits.max_epochs, "max_epochs")


def _check_publish_weights(request: trainer_pb2.PublishWeightsRequest, limits: RequestLimits) -> None:
    _check_at_least(request.version, "version", 1)
    _check_enum(request, "transport", "transport")


def _check_slug(run_id: str, field: str) -> None:
    """Run ids name folders of the run store: only a slug can never reach outside it ("..", "/", NUL)."""
    if not _RUN_ID.fullmatch(run_id):
        raise InvalidRequest(
            field,
            f"must be letters, digits, '.', '_' or '-' (not first), at most 64 characters; got {_quote(run_id)}",
        )


def _check_start_run(request: controller_pb2.StartRunRequest, limits: RequestLimits) -> None:
    """An empty run id is generated; config_yaml's own run id is checked with the rest of the config."""
    _check_not_blank(request.config_yaml, "config_yaml")
    if request.run_id:
        _check_slug(request.run_id, "run_id")


def _check_run_id(
    request: controller_pb2.PauseRunRequest
    | controller_pb2.ResumeRunRequest
    | controller_pb2.StopRunRequest
    | controller_pb2.GetRunRequest
    | controller_pb2.ListRoundsRequest
    | controller_pb2.WatchRoundsRequest,
    limits: RequestLimits,
) -> None:
    _check_nonempty(request.run_id, "run_id")
    _check_slug(request.run_id, "run_id")


#: A rule gets the request (of the method's input type) and raises InvalidRequest on the first problem.
Rule = Callable[[Any, RequestLimits], None]

#: The one place that says which unary-request method is checked how. Client-streaming LoadWeights is
#: checked message by message with `WeightStreamValidator` instead (see `STREAM_VALIDATORS`).
RULES: dict[str, Rule] = {
    "/mpo.v1.RolloutService/Generate": _check_generate,
    "/mpo.v1.RolloutService/GenerateStream": _check_generate,
    "/mpo.v1.RolloutService/Continue": _check_continue,
    "/mpo.v1.RolloutService/LoadWeightsFromStorage": _check_load_weights_from_storage,
    "/mpo.v1.RewardService/Score": _check_score,
    "/mpo.v1.RewardService/BuildPairs": _check_build_pairs,
    "/mpo.v1.TrainerService/Train": _check_train,
    "/mpo.v1.TrainerService/PublishWeights": _check_publish_weights,
    "/mpo.v1.ControllerService/StartRun": _check_start_run,
    "/mpo.v1.ControllerService/PauseRun": _check_run_id,
    "/mpo.v1.ControllerService/ResumeRun": _check_run_id,
    "/mpo.v1.ControllerService/StopRun": _check_run_id,
    "/mpo.v1.ControllerService/GetRun": _check_run_id,
    "/mpo.v1.ControllerService/ListRounds": _check_run_id,
    "/mpo.v1.ControllerService/WatchRounds": _check_run_id,
}


@cache
def request_type(method: str) -> type[Message]:
    """The request message class of a full gRPC method name, from the generated descriptors.

    Raises KeyError for a method that no imported mpo.v1 service defines.
    """
    service_name, _, method_name = method.lstrip("/").partition("/")
    service = descriptor_pool.Default().FindServiceByName(service_name)
    return message_factory.GetMessageClass(service.methods_by_name[method_name].input_type)


def validate_request(method: str, request: Message, limits: RequestLimits) -> None:
    """Raise InvalidRequest for the first problem of `request`; methods without rules pass.

    Every code raised is INVALID_ARGUMENT. A request of another type than the method's is a bug in the
    caller, not in the client, and raises TypeError.
    """
    rule = RULES.get(method)
    if rule is None:
        return
    expected = request_type(method).DESCRIPTOR.full_name
    if request.DESCRIPTOR.full_name != expected:
        raise TypeError(f"{method} takes {expected}, got {request.DESCRIPTOR.full_name}")
    rule(request, limits)


class WeightStreamValidator:
    """Checks a LoadWeights client stream as it arrives, so a bad transfer is refused before it is loaded.

    Call `feed` for every message and `finish` when the client half-closes. The manifest comes first,
    then chunks with consecutive indexes from 0 whose payloads add up to exactly `manifest.total_bytes`.
    """

    def __init__(self) -> None:
        self.manifest: rollout_pb2.WeightManifest | None = None
        self.bytes_received = 0
        self.chunks_received = 0

    def feed(self, message: rollout_pb2.LoadWeightsRequest) -> None:
        """Check one message before it is handed on, so a bad stream stops at its first bad message."""
        part = message.WhichOneof("part")
        if part is None:
            raise InvalidRequest("part", "must set manifest or chunk")
        if part == "manifest":
            if self.manifest is not None:
                raise InvalidRequest("manifest", "only the first message of the stream may be a manifest")
            _check_manifest(message.manifest, "manifest")
            self.manifest = rollout_pb2.WeightManifest()
            self.manifest.CopyFrom(message.manifest)
            return
        if self.manifest is None:
            raise InvalidRequest("chunk", "chunk before manifest: the first message must be the manifest")
        chunk = message.chunk
        if chunk.index != self.chunks_received:
            raise InvalidRequest(
                "chunk.index", f"expected {self.chunks_received}, got {chunk.index} (chunks must arrive in order)"
            )
        size = len(chunk.payload)  # read once: every read of a bytes field copies it out of the message
        if size == 0:
            raise InvalidRequest("chunk.payload", "must not be empty")
        total = self.bytes_received + size
        if total > self.manifest.total_bytes:
            raise InvalidRequest(
                "chunk.payload", f"{total} bytes received, more than manifest.total_bytes ({self.manifest.total_bytes})"
            )
        self.bytes_received = total
        self.chunks_received += 1

    def finish(self) -> None:
        """Check the stream as a whole once the client is done: a truncated transfer must not be loaded."""
        if self.manifest is None:
            raise InvalidRequest("manifest", "stream ended without a manifest")
        if self.chunks_received == 0:
            raise InvalidRequest("chunk", "stream ended without chunks")
        if self.bytes_received != self.manifest.total_bytes:
            raise InvalidRequest(
                "manifest.total_bytes",
                f"stream ended after {self.bytes_received} of {self.manifest.total_bytes} bytes",
            )


#: Client-streaming methods, each with the factory of its per-call stream validator.
STREAM_VALIDATORS: dict[str, Callable[[], WeightStreamValidator]] = {
    "/mpo.v1.RolloutService/LoadWeights": WeightStreamValidator,
}


def stream_validator_for(method: str) -> WeightStreamValidator | None:
    """A fresh validator for one call of a client-streaming method, or None when it has no stream rules."""
    factory = STREAM_VALIDATORS.get(method)
    return factory() if factory is not None else None
