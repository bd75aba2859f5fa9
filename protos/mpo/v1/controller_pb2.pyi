from mpo.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATE_UNSPECIFIED: _ClassVar[RunState]
    RUN_STATE_RUNNING: _ClassVar[RunState]
    RUN_STATE_PAUSED: _ClassVar[RunState]
    RUN_STATE_STOPPED: _ClassVar[RunState]
    RUN_STATE_COMPLETED: _ClassVar[RunState]
    RUN_STATE_FAILED: _ClassVar[RunState]
RUN_STATE_UNSPECIFIED: RunState
RUN_STATE_RUNNING: RunState
RUN_STATE_PAUSED: RunState
RUN_STATE_STOPPED: RunState
RUN_STATE_COMPLETED: RunState
RUN_STATE_FAILED: RunState

class Run(_message.Message):
    __slots__ = ("run_id", "state", "current_round", "policy_version", "best_eval_accuracy", "best_round", "started_at", "updated_at", "error", "config_yaml", "phase", "phase_round", "base_eval_accuracy", "best_checkpoint", "base_eval_degenerate", "base_eval_hallucination")
    class BaseEvalAccuracyEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class BaseEvalDegenerateEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class BaseEvalHallucinationEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _common_pb2.Hallucination
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_common_pb2.Hallucination, _Mapping]] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CURRENT_ROUND_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    BEST_EVAL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    BEST_ROUND_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CONFIG_YAML_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PHASE_ROUND_FIELD_NUMBER: _ClassVar[int]
    BASE_EVAL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    BEST_CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    BASE_EVAL_DEGENERATE_FIELD_NUMBER: _ClassVar[int]
    BASE_EVAL_HALLUCINATION_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    state: RunState
    current_round: int
    policy_version: int
    best_eval_accuracy: float
    best_round: int
    started_at: float
    updated_at: float
    error: str
    config_yaml: str
    phase: str
    phase_round: int
    base_eval_accuracy: _containers.ScalarMap[str, float]
    best_checkpoint: str
    base_eval_degenerate: _containers.ScalarMap[str, float]
    base_eval_hallucination: _containers.MessageMap[str, _common_pb2.Hallucination]
    def __init__(self, run_id: _Optional[str] = ..., state: _Optional[_Union[RunState, str]] = ..., current_round: _Optional[int] = ..., policy_version: _Optional[int] = ..., best_eval_accuracy: _Optional[float] = ..., best_round: _Optional[int] = ..., started_at: _Optional[float] = ..., updated_at: _Optional[float] = ..., error: _Optional[str] = ..., config_yaml: _Optional[str] = ..., phase: _Optional[str] = ..., phase_round: _Optional[int] = ..., base_eval_accuracy: _Optional[_Mapping[str, float]] = ..., best_checkpoint: _Optional[str] = ..., base_eval_degenerate: _Optional[_Mapping[str, float]] = ..., base_eval_hallucination: _Optional[_Mapping[str, _common_pb2.Hallucination]] = ...) -> None: ...

class StartRunRequest(_message.Message):
    __slots__ = ("config_yaml", "run_id")
    CONFIG_YAML_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    config_yaml: str
    run_id: str
    def __init__(self, config_yaml: _Optional[str] = ..., run_id: _Optional[str] = ...) -> None: ...

class StartRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: Run
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...

class PauseRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class PauseRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: Run
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...

class ResumeRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class ResumeRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: Run
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...

class StopRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class StopRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: Run
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class GetRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: Run
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs",)
    RUNS_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[Run]
    def __init__(self, runs: _Optional[_Iterable[_Union[Run, _Mapping]]] = ...) -> None: ...

class ListRoundsRequest(_message.Message):
    __slots__ = ("run_id", "from_round", "limit")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_ROUND_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    from_round: int
    limit: int
    def __init__(self, run_id: _Optional[str] = ..., from_round: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class ListRoundsResponse(_message.Message):
    __slots__ = ("rounds",)
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    rounds: _containers.RepeatedCompositeFieldContainer[_common_pb2.RoundMetrics]
    def __init__(self, rounds: _Optional[_Iterable[_Union[_common_pb2.RoundMetrics, _Mapping]]] = ...) -> None: ...

class WatchRoundsRequest(_message.Message):
    __slots__ = ("run_id", "from_round")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_ROUND_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    from_round: int
    def __init__(self, run_id: _Optional[str] = ..., from_round: _Optional[int] = ...) -> None: ...

class WatchRoundsResponse(_message.Message):
    __slots__ = ("round",)
    ROUND_FIELD_NUMBER: _ClassVar[int]
    round: _common_pb2.RoundMetrics
    def __init__(self, round: _Optional[_Union[_common_pb2.RoundMetrics, _Mapping]] = ...) -> None: ...
