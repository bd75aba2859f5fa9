from mpo.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WeightTransport(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WEIGHT_TRANSPORT_UNSPECIFIED: _ClassVar[WeightTransport]
    WEIGHT_TRANSPORT_GRPC_STREAM: _ClassVar[WeightTransport]
    WEIGHT_TRANSPORT_SHARED_STORAGE: _ClassVar[WeightTransport]
    WEIGHT_TRANSPORT_GPU_DIRECT: _ClassVar[WeightTransport]
WEIGHT_TRANSPORT_UNSPECIFIED: WeightTransport
WEIGHT_TRANSPORT_GRPC_STREAM: WeightTransport
WEIGHT_TRANSPORT_SHARED_STORAGE: WeightTransport
WEIGHT_TRANSPORT_GPU_DIRECT: WeightTransport

class TrainRequest(_message.Message):
    __slots__ = ("pairs", "round", "epochs", "prompts")
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    pairs: _containers.RepeatedCompositeFieldContainer[_common_pb2.PreferencePair]
    round: int
    epochs: int
    prompts: _containers.RepeatedCompositeFieldContainer[_common_pb2.Prompt]
    def __init__(self, pairs: _Optional[_Iterable[_Union[_common_pb2.PreferencePair, _Mapping]]] = ..., round: _Optional[int] = ..., epochs: _Optional[int] = ..., prompts: _Optional[_Iterable[_Union[_common_pb2.Prompt, _Mapping]]] = ...) -> None: ...

class TrainResponse(_message.Message):
    __slots__ = ("steps", "mean", "pairs_already_trained", "pairs_truncated")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    PAIRS_ALREADY_TRAINED_FIELD_NUMBER: _ClassVar[int]
    PAIRS_TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    steps: _containers.RepeatedCompositeFieldContainer[_common_pb2.StepMetrics]
    mean: _common_pb2.StepMetrics
    pairs_already_trained: int
    pairs_truncated: int
    def __init__(self, steps: _Optional[_Iterable[_Union[_common_pb2.StepMetrics, _Mapping]]] = ..., mean: _Optional[_Union[_common_pb2.StepMetrics, _Mapping]] = ..., pairs_already_trained: _Optional[int] = ..., pairs_truncated: _Optional[int] = ...) -> None: ...

class CheckpointRequest(_message.Message):
    __slots__ = ("tag", "best")
    TAG_FIELD_NUMBER: _ClassVar[int]
    BEST_FIELD_NUMBER: _ClassVar[int]
    tag: str
    best: bool
    def __init__(self, tag: _Optional[str] = ..., best: _Optional[bool] = ...) -> None: ...

class CheckpointResponse(_message.Message):
    __slots__ = ("path", "step", "round")
    PATH_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    path: str
    step: int
    round: int
    def __init__(self, path: _Optional[str] = ..., step: _Optional[int] = ..., round: _Optional[int] = ...) -> None: ...

class PublishWeightsRequest(_message.Message):
    __slots__ = ("version", "transport")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    version: int
    transport: WeightTransport
    def __init__(self, version: _Optional[int] = ..., transport: _Optional[_Union[WeightTransport, str]] = ...) -> None: ...

class PublishWeightsResponse(_message.Message):
    __slots__ = ("policy_version", "bytes", "gather_seconds", "transfer_seconds", "replicas_loaded")
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    GATHER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_LOADED_FIELD_NUMBER: _ClassVar[int]
    policy_version: int
    bytes: int
    gather_seconds: float
    transfer_seconds: float
    replicas_loaded: int
    def __init__(self, policy_version: _Optional[int] = ..., bytes: _Optional[int] = ..., gather_seconds: _Optional[float] = ..., transfer_seconds: _Optional[float] = ..., replicas_loaded: _Optional[int] = ...) -> None: ...

class TrainerServiceGetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TrainerServiceGetStatusResponse(_message.Message):
    __slots__ = ("world_size", "strategy", "step", "round", "policy_version", "reward_shift", "model", "ready")
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    REWARD_SHIFT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    world_size: int
    strategy: str
    step: int
    round: int
    policy_version: int
    reward_shift: float
    model: str
    ready: bool
    def __init__(self, world_size: _Optional[int] = ..., strategy: _Optional[str] = ..., step: _Optional[int] = ..., round: _Optional[int] = ..., policy_version: _Optional[int] = ..., reward_shift: _Optional[float] = ..., model: _Optional[str] = ..., ready: _Optional[bool] = ...) -> None: ...
