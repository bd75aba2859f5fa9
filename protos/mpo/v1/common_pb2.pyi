from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_ABORTED: _ClassVar[FinishReason]

class PairSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PAIR_SOURCE_UNSPECIFIED: _ClassVar[PairSource]
    PAIR_SOURCE_CORRECTNESS: _ClassVar[PairSource]
    PAIR_SOURCE_DROPOUT_NTP: _ClassVar[PairSource]
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_ABORTED: FinishReason
PAIR_SOURCE_UNSPECIFIED: PairSource
PAIR_SOURCE_CORRECTNESS: PairSource
PAIR_SOURCE_DROPOUT_NTP: PairSource

class Image(_message.Message):
    __slots__ = ("data", "uri")
    DATA_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    uri: str
    def __init__(self, data: _Optional[bytes] = ..., uri: _Optional[str] = ...) -> None: ...

class Prompt(_message.Message):
    __slots__ = ("id", "question", "images", "answer", "choices", "task", "meta_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    CHOICES_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    META_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    question: str
    images: _containers.RepeatedCompositeFieldContainer[Image]
    answer: str
    choices: _containers.RepeatedScalarFieldContainer[str]
    task: str
    meta_json: str
    def __init__(self, id: _Optional[str] = ..., question: _Optional[str] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., answer: _Optional[str] = ..., choices: _Optional[_Iterable[str]] = ..., task: _Optional[str] = ..., meta_json: _Optional[str] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("n", "temperature", "top_p", "top_k", "max_tokens", "seed", "stop", "return_logprobs")
    N_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    RETURN_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    n: int
    temperature: float
    top_p: float
    top_k: int
    max_tokens: int
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    return_logprobs: bool
    def __init__(self, n: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., max_tokens: _Optional[int] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., return_logprobs: _Optional[bool] = ...) -> None: ...

class Sample(_message.Message):
    __slots__ = ("prompt_id", "index", "text", "token_ids", "logprobs", "finish_reason", "policy_version")
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    prompt_id: str
    index: int
    text: str
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    logprobs: _containers.RepeatedScalarFieldContainer[float]
    finish_reason: FinishReason
    policy_version: int
    def __init__(self, prompt_id: _Optional[str] = ..., index: _Optional[int] = ..., text: _Optional[str] = ..., token_ids: _Optional[_Iterable[int]] = ..., logprobs: _Optional[_Iterable[float]] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., policy_version: _Optional[int] = ...) -> None: ...

class Provenance(_message.Message):
    __slots__ = ("policy_version", "round", "verifier", "chosen_sample_index", "rejected_sample_index", "chosen_answer", "rejected_answer")
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    VERIFIER_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_SAMPLE_INDEX_FIELD_NUMBER: _ClassVar[int]
    REJECTED_SAMPLE_INDEX_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_ANSWER_FIELD_NUMBER: _ClassVar[int]
    REJECTED_ANSWER_FIELD_NUMBER: _ClassVar[int]
    policy_version: int
    round: int
    verifier: str
    chosen_sample_index: int
    rejected_sample_index: int
    chosen_answer: str
    rejected_answer: str
    def __init__(self, policy_version: _Optional[int] = ..., round: _Optional[int] = ..., verifier: _Optional[str] = ..., chosen_sample_index: _Optional[int] = ..., rejected_sample_index: _Optional[int] = ..., chosen_answer: _Optional[str] = ..., rejected_answer: _Optional[str] = ...) -> None: ...

class PreferencePair(_message.Message):
    __slots__ = ("id", "prompt", "chosen", "rejected", "source", "provenance", "prompt_id", "unterminated")
    ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PROVENANCE_FIELD_NUMBER: _ClassVar[int]
    PROMPT_ID_FIELD_NUMBER: _ClassVar[int]
    UNTERMINATED_FIELD_NUMBER: _ClassVar[int]
    id: str
    prompt: Prompt
    chosen: str
    rejected: str
    source: PairSource
    provenance: Provenance
    prompt_id: str
    unterminated: bool
    def __init__(self, id: _Optional[str] = ..., prompt: _Optional[_Union[Prompt, _Mapping]] = ..., chosen: _Optional[str] = ..., rejected: _Optional[str] = ..., source: _Optional[_Union[PairSource, str]] = ..., provenance: _Optional[_Union[Provenance, _Mapping]] = ..., prompt_id: _Optional[str] = ..., unterminated: _Optional[bool] = ...) -> None: ...

class StepMetrics(_message.Message):
    __slots__ = ("step", "loss", "loss_preference", "loss_quality", "loss_generation", "reward_shift", "reward_chosen", "reward_rejected", "reward_margin", "preference_accuracy", "learning_rate", "grad_norm", "tokens")
    STEP_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    LOSS_PREFERENCE_FIELD_NUMBER: _ClassVar[int]
    LOSS_QUALITY_FIELD_NUMBER: _ClassVar[int]
    LOSS_GENERATION_FIELD_NUMBER: _ClassVar[int]
    REWARD_SHIFT_FIELD_NUMBER: _ClassVar[int]
    REWARD_CHOSEN_FIELD_NUMBER: _ClassVar[int]
    REWARD_REJECTED_FIELD_NUMBER: _ClassVar[int]
    REWARD_MARGIN_FIELD_NUMBER: _ClassVar[int]
    PREFERENCE_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    step: int
    loss: float
    loss_preference: float
    loss_quality: float
    loss_generation: float
    reward_shift: float
    reward_chosen: float
    reward_rejected: float
    reward_margin: float
    preference_accuracy: float
    learning_rate: float
    grad_norm: float
    tokens: int
    def __init__(self, step: _Optional[int] = ..., loss: _Optional[float] = ..., loss_preference: _Optional[float] = ..., loss_quality: _Optional[float] = ..., loss_generation: _Optional[float] = ..., reward_shift: _Optional[float] = ..., reward_chosen: _Optional[float] = ..., reward_rejected: _Optional[float] = ..., reward_margin: _Optional[float] = ..., preference_accuracy: _Optional[float] = ..., learning_rate: _Optional[float] = ..., grad_norm: _Optional[float] = ..., tokens: _Optional[int] = ...) -> None: ...

class LabelStats(_message.Message):
    __slots__ = ("prompts", "samples", "correct", "wrong", "unparsable", "prompts_all_correct", "prompts_all_wrong", "pairs_correctness", "pairs_dropout_ntp", "accuracy_by_task", "wrong_step", "dropout_ntp_cut", "dropout_ntp_fewer_mentions")
    class AccuracyByTaskEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    WRONG_FIELD_NUMBER: _ClassVar[int]
    UNPARSABLE_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_ALL_CORRECT_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_ALL_WRONG_FIELD_NUMBER: _ClassVar[int]
    PAIRS_CORRECTNESS_FIELD_NUMBER: _ClassVar[int]
    PAIRS_DROPOUT_NTP_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_BY_TASK_FIELD_NUMBER: _ClassVar[int]
    WRONG_STEP_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_NTP_CUT_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_NTP_FEWER_MENTIONS_FIELD_NUMBER: _ClassVar[int]
    prompts: int
    samples: int
    correct: int
    wrong: int
    unparsable: int
    prompts_all_correct: int
    prompts_all_wrong: int
    pairs_correctness: int
    pairs_dropout_ntp: int
    accuracy_by_task: _containers.ScalarMap[str, float]
    wrong_step: int
    dropout_ntp_cut: int
    dropout_ntp_fewer_mentions: int
    def __init__(self, prompts: _Optional[int] = ..., samples: _Optional[int] = ..., correct: _Optional[int] = ..., wrong: _Optional[int] = ..., unparsable: _Optional[int] = ..., prompts_all_correct: _Optional[int] = ..., prompts_all_wrong: _Optional[int] = ..., pairs_correctness: _Optional[int] = ..., pairs_dropout_ntp: _Optional[int] = ..., accuracy_by_task: _Optional[_Mapping[str, float]] = ..., wrong_step: _Optional[int] = ..., dropout_ntp_cut: _Optional[int] = ..., dropout_ntp_fewer_mentions: _Optional[int] = ...) -> None: ...

class PhaseTimings(_message.Message):
    __slots__ = ("generate", "label", "commit", "train", "publish", "eval", "overhead", "total")
    GENERATE_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    PUBLISH_FIELD_NUMBER: _ClassVar[int]
    EVAL_FIELD_NUMBER: _ClassVar[int]
    OVERHEAD_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    generate: float
    label: float
    commit: float
    train: float
    publish: float
    eval: float
    overhead: float
    total: float
    def __init__(self, generate: _Optional[float] = ..., label: _Optional[float] = ..., commit: _Optional[float] = ..., train: _Optional[float] = ..., publish: _Optional[float] = ..., eval: _Optional[float] = ..., overhead: _Optional[float] = ..., total: _Optional[float] = ...) -> None: ...

class RoundMetrics(_message.Message):
    __slots__ = ("run_id", "round", "rollout_policy_version", "trained_policy_version", "staleness_max", "staleness_mean", "labels", "train", "train_steps", "timings", "rollout_tokens_per_second", "eval_accuracy", "finished_at", "eval_degenerate", "eval_hallucination")
    class EvalAccuracyEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class EvalDegenerateEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class EvalHallucinationEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Hallucination
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Hallucination, _Mapping]] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    TRAINED_POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    STALENESS_MAX_FIELD_NUMBER: _ClassVar[int]
    STALENESS_MEAN_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    TRAIN_STEPS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    ROLLOUT_TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    EVAL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    EVAL_DEGENERATE_FIELD_NUMBER: _ClassVar[int]
    EVAL_HALLUCINATION_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    round: int
    rollout_policy_version: int
    trained_policy_version: int
    staleness_max: int
    staleness_mean: float
    labels: LabelStats
    train: StepMetrics
    train_steps: int
    timings: PhaseTimings
    rollout_tokens_per_second: float
    eval_accuracy: _containers.ScalarMap[str, float]
    finished_at: float
    eval_degenerate: _containers.ScalarMap[str, float]
    eval_hallucination: _containers.MessageMap[str, Hallucination]
    def __init__(self, run_id: _Optional[str] = ..., round: _Optional[int] = ..., rollout_policy_version: _Optional[int] = ..., trained_policy_version: _Optional[int] = ..., staleness_max: _Optional[int] = ..., staleness_mean: _Optional[float] = ..., labels: _Optional[_Union[LabelStats, _Mapping]] = ..., train: _Optional[_Union[StepMetrics, _Mapping]] = ..., train_steps: _Optional[int] = ..., timings: _Optional[_Union[PhaseTimings, _Mapping]] = ..., rollout_tokens_per_second: _Optional[float] = ..., eval_accuracy: _Optional[_Mapping[str, float]] = ..., finished_at: _Optional[float] = ..., eval_degenerate: _Optional[_Mapping[str, float]] = ..., eval_hallucination: _Optional[_Mapping[str, Hallucination]] = ...) -> None: ...

class Hallucination(_message.Message):
    __slots__ = ("rate", "mentions", "recall", "descriptions")
    RATE_FIELD_NUMBER: _ClassVar[int]
    MENTIONS_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    rate: float
    mentions: float
    recall: float
    descriptions: int
    def __init__(self, rate: _Optional[float] = ..., mentions: _Optional[float] = ..., recall: _Optional[float] = ..., descriptions: _Optional[int] = ...) -> None: ...
