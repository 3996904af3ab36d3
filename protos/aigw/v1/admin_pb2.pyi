import datetime

from aigw.v1 import otel_config_pb2 as _otel_config_pb2
from aigw.v1 import traces_pb2 as _traces_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReplicaState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPLICA_STATE_UNSPECIFIED: _ClassVar[ReplicaState]
    REPLICA_STATE_LIVE: _ClassVar[ReplicaState]
    REPLICA_STATE_GONE: _ClassVar[ReplicaState]
REPLICA_STATE_UNSPECIFIED: ReplicaState
REPLICA_STATE_LIVE: ReplicaState
REPLICA_STATE_GONE: ReplicaState

class GetOtelConfigRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetOtelConfigResponse(_message.Message):
    __slots__ = ("config", "version", "health", "store")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    config: _otel_config_pb2.OtelConfig
    version: int
    health: _otel_config_pb2.OtelHealth
    store: ConfigStoreHealth
    def __init__(self, config: _Optional[_Union[_otel_config_pb2.OtelConfig, _Mapping]] = ..., version: _Optional[int] = ..., health: _Optional[_Union[_otel_config_pb2.OtelHealth, _Mapping]] = ..., store: _Optional[_Union[ConfigStoreHealth, _Mapping]] = ...) -> None: ...

class ConfigStoreHealth(_message.Message):
    __slots__ = ("backend", "connected", "last_error", "last_error_time")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_TIME_FIELD_NUMBER: _ClassVar[int]
    backend: str
    connected: bool
    last_error: str
    last_error_time: _timestamp_pb2.Timestamp
    def __init__(self, backend: _Optional[str] = ..., connected: _Optional[bool] = ..., last_error: _Optional[str] = ..., last_error_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SetOtelConfigRequest(_message.Message):
    __slots__ = ("config", "expected_version")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    config: _otel_config_pb2.OtelConfig
    expected_version: int
    def __init__(self, config: _Optional[_Union[_otel_config_pb2.OtelConfig, _Mapping]] = ..., expected_version: _Optional[int] = ...) -> None: ...

class SetOtelConfigResponse(_message.Message):
    __slots__ = ("config", "version", "health")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    config: _otel_config_pb2.OtelConfig
    version: int
    health: _otel_config_pb2.OtelHealth
    def __init__(self, config: _Optional[_Union[_otel_config_pb2.OtelConfig, _Mapping]] = ..., version: _Optional[int] = ..., health: _Optional[_Union[_otel_config_pb2.OtelHealth, _Mapping]] = ...) -> None: ...

class TestOtelConfigRequest(_message.Message):
    __slots__ = ("config",)
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    config: _otel_config_pb2.OtelConfig
    def __init__(self, config: _Optional[_Union[_otel_config_pb2.OtelConfig, _Mapping]] = ...) -> None: ...

class ExportTestResult(_message.Message):
    __slots__ = ("success", "reason", "http_status", "grpc_code", "message", "elapsed")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HTTP_STATUS_FIELD_NUMBER: _ClassVar[int]
    GRPC_CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_FIELD_NUMBER: _ClassVar[int]
    success: bool
    reason: str
    http_status: int
    grpc_code: str
    message: str
    elapsed: _duration_pb2.Duration
    def __init__(self, success: _Optional[bool] = ..., reason: _Optional[str] = ..., http_status: _Optional[int] = ..., grpc_code: _Optional[str] = ..., message: _Optional[str] = ..., elapsed: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class TestOtelConfigResponse(_message.Message):
    __slots__ = ("traces", "metrics")
    TRACES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    traces: ExportTestResult
    metrics: ExportTestResult
    def __init__(self, traces: _Optional[_Union[ExportTestResult, _Mapping]] = ..., metrics: _Optional[_Union[ExportTestResult, _Mapping]] = ...) -> None: ...

class ListTracesRequest(_message.Message):
    __slots__ = ("model", "status", "start_time_min", "start_time_max", "min_duration", "page_size", "page_token")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_MIN_FIELD_NUMBER: _ClassVar[int]
    START_TIME_MAX_FIELD_NUMBER: _ClassVar[int]
    MIN_DURATION_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    model: str
    status: _traces_pb2.TraceStatusFilter
    start_time_min: _timestamp_pb2.Timestamp
    start_time_max: _timestamp_pb2.Timestamp
    min_duration: _duration_pb2.Duration
    page_size: int
    page_token: str
    def __init__(self, model: _Optional[str] = ..., status: _Optional[_Union[_traces_pb2.TraceStatusFilter, str]] = ..., start_time_min: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time_max: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., min_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTracesResponse(_message.Message):
    __slots__ = ("traces", "next_page_token")
    TRACES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    traces: _containers.RepeatedCompositeFieldContainer[_traces_pb2.TraceSummary]
    next_page_token: str
    def __init__(self, traces: _Optional[_Iterable[_Union[_traces_pb2.TraceSummary, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetTraceRequest(_message.Message):
    __slots__ = ("trace_id",)
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    trace_id: str
    def __init__(self, trace_id: _Optional[str] = ...) -> None: ...

class ListReplicasRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Replica(_message.Message):
    __slots__ = ("instance_id", "address", "hostname", "pid", "start_time", "last_heartbeat_time", "applied_version", "state", "health", "self")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_TIME_FIELD_NUMBER: _ClassVar[int]
    APPLIED_VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    SELF_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    address: str
    hostname: str
    pid: int
    start_time: _timestamp_pb2.Timestamp
    last_heartbeat_time: _timestamp_pb2.Timestamp
    applied_version: int
    state: ReplicaState
    health: _otel_config_pb2.OtelHealth
    self: bool
    def __init__(self_, instance_id: _Optional[str] = ..., address: _Optional[str] = ..., hostname: _Optional[str] = ..., pid: _Optional[int] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_heartbeat_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., applied_version: _Optional[int] = ..., state: _Optional[_Union[ReplicaState, str]] = ..., health: _Optional[_Union[_otel_config_pb2.OtelHealth, _Mapping]] = ..., self: _Optional[bool] = ...) -> None: ...

class ListReplicasResponse(_message.Message):
    __slots__ = ("replicas", "current_version", "converged")
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONVERGED_FIELD_NUMBER: _ClassVar[int]
    replicas: _containers.RepeatedCompositeFieldContainer[Replica]
    current_version: int
    converged: bool
    def __init__(self, replicas: _Optional[_Iterable[_Union[Replica, _Mapping]]] = ..., current_version: _Optional[int] = ..., converged: _Optional[bool] = ...) -> None: ...

class ListOtelConfigHistoryRequest(_message.Message):
    __slots__ = ("page_size", "before_version")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    BEFORE_VERSION_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    before_version: int
    def __init__(self, page_size: _Optional[int] = ..., before_version: _Optional[int] = ...) -> None: ...

class OtelConfigVersion(_message.Message):
    __slots__ = ("version", "config", "applied_time", "author", "action", "restored_version")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    APPLIED_TIME_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RESTORED_VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    config: _otel_config_pb2.OtelConfig
    applied_time: _timestamp_pb2.Timestamp
    author: str
    action: str
    restored_version: int
    def __init__(self, version: _Optional[int] = ..., config: _Optional[_Union[_otel_config_pb2.OtelConfig, _Mapping]] = ..., applied_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., author: _Optional[str] = ..., action: _Optional[str] = ..., restored_version: _Optional[int] = ...) -> None: ...

class ListOtelConfigHistoryResponse(_message.Message):
    __slots__ = ("versions", "next_before_version")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_BEFORE_VERSION_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[OtelConfigVersion]
    next_before_version: int
    def __init__(self, versions: _Optional[_Iterable[_Union[OtelConfigVersion, _Mapping]]] = ..., next_before_version: _Optional[int] = ...) -> None: ...

class RollbackOtelConfigRequest(_message.Message):
    __slots__ = ("version", "expected_version")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    version: int
    expected_version: int
    def __init__(self, version: _Optional[int] = ..., expected_version: _Optional[int] = ...) -> None: ...

class RollbackOtelConfigResponse(_message.Message):
    __slots__ = ("config", "version", "health")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    config: _otel_config_pb2.OtelConfig
    version: int
    health: _otel_config_pb2.OtelHealth
    def __init__(self, config: _Optional[_Union[_otel_config_pb2.OtelConfig, _Mapping]] = ..., version: _Optional[int] = ..., health: _Optional[_Union[_otel_config_pb2.OtelHealth, _Mapping]] = ...) -> None: ...

class GetTraceResponse(_message.Message):
    __slots__ = ("trace_id", "spans")
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPANS_FIELD_NUMBER: _ClassVar[int]
    trace_id: str
    spans: _containers.RepeatedCompositeFieldContainer[_traces_pb2.Span]
    def __init__(self, trace_id: _Optional[str] = ..., spans: _Optional[_Iterable[_Union[_traces_pb2.Span, _Mapping]]] = ...) -> None: ...
