from mpo.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Verdict(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERDICT_UNSPECIFIED: _ClassVar[Verdict]
    VERDICT_CORRECT: _ClassVar[Verdict]
    VERDICT_WRONG: _ClassVar[Verdict]
    VERDICT_UNPARSABLE: _ClassVar[Verdict]
    VERDICT_NO_GROUND_TRUTH: _ClassVar[Verdict]
    VERDICT_WRONG_STEP: _ClassVar[Verdict]
VERDICT_UNSPECIFIED: Verdict
VERDICT_CORRECT: Verdict
VERDICT_WRONG: Verdict
VERDICT_UNPARSABLE: Verdict
VERDICT_NO_GROUND_TRUTH: Verdict
VERDICT_WRONG_STEP: Verdict

class ScoreRequest(_message.Message):
    __slots__ = ("prompts", "samples")
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedCompositeFieldContainer[_common_pb2.Prompt]
    samples: _containers.RepeatedCompositeFieldContainer[_common_pb2.Sample]
    def __init__(self, prompts: _Optional[_Iterable[_Union[_common_pb2.Prompt, _Mapping]]] = ..., samples: _Optional[_Iterable[_Union[_common_pb2.Sample, _Mapping]]] = ...) -> None: ...

class SampleScore(_message.Message):
    __slots__ = ("prompt_id", "index", "verdict", "extracted_answer", "verifier", "reward")
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    EXTRACTED_ANSWER_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    prompt_id: str
    index: int
    verdict: Verdict
    extracted_answer: str
    verifier: str
    reward: float
    def __init__(self, prompt_id: _Optional[str] = ..., index: _Optional[int] = ..., verdict: _Optional[_Union[Verdict, str]] = ..., extracted_answer: _Optional[str] = ..., verifier: _Optional[str] = ..., reward: _Optional[float] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("scores", "stats")
    SCORES_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    scores: _containers.RepeatedCompositeFieldContainer[SampleScore]
    stats: _common_pb2.LabelStats
    def __init__(self, scores: _Optional[_Iterable[_Union[SampleScore, _Mapping]]] = ..., stats: _Optional[_Union[_common_pb2.LabelStats, _Mapping]] = ...) -> None: ...

class PairOptions(_message.Message):
    __slots__ = ("max_pairs_per_prompt", "seed", "dropout_prefix_fraction", "dropout_finished_only", "dropout_unterminated", "dropout_sampling", "dropout_match_length")
    MAX_PAIRS_PER_PROMPT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_PREFIX_FRACTION_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FINISHED_ONLY_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_UNTERMINATED_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_SAMPLING_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_MATCH_LENGTH_FIELD_NUMBER: _ClassVar[int]
    max_pairs_per_prompt: int
    seed: int
    dropout_prefix_fraction: float
    dropout_finished_only: bool
    dropout_unterminated: bool
    dropout_sampling: _common_pb2.SamplingParams
    dropout_match_length: bool
    def __init__(self, max_pairs_per_prompt: _Optional[int] = ..., seed: _Optional[int] = ..., dropout_prefix_fraction: _Optional[float] = ..., dropout_finished_only: _Optional[bool] = ..., dropout_unterminated: _Optional[bool] = ..., dropout_sampling: _Optional[_Union[_common_pb2.SamplingParams, _Mapping]] = ..., dropout_match_length: _Optional[bool] = ...) -> None: ...

class BuildPairsRequest(_message.Message):
    __slots__ = ("prompts", "samples", "round", "options")
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedCompositeFieldContainer[_common_pb2.Prompt]
    samples: _containers.RepeatedCompositeFieldContainer[_common_pb2.Sample]
    round: int
    options: PairOptions
    def __init__(self, prompts: _Optional[_Iterable[_Union[_common_pb2.Prompt, _Mapping]]] = ..., samples: _Optional[_Iterable[_Union[_common_pb2.Sample, _Mapping]]] = ..., round: _Optional[int] = ..., options: _Optional[_Union[PairOptions, _Mapping]] = ...) -> None: ...

class BuildPairsResponse(_message.Message):
    __slots__ = ("pairs", "stats", "skipped_prompts", "prompts")
    class SkippedPromptsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    pairs: _containers.RepeatedCompositeFieldContainer[_common_pb2.PreferencePair]
    stats: _common_pb2.LabelStats
    skipped_prompts: _containers.ScalarMap[str, str]
    prompts: _containers.RepeatedCompositeFieldContainer[_common_pb2.Prompt]
    def __init__(self, pairs: _Optional[_Iterable[_Union[_common_pb2.PreferencePair, _Mapping]]] = ..., stats: _Optional[_Union[_common_pb2.LabelStats, _Mapping]] = ..., skipped_prompts: _Optional[_Mapping[str, str]] = ..., prompts: _Optional[_Iterable[_Union[_common_pb2.Prompt, _Mapping]]] = ...) -> None: ...
