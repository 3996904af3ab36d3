import datetime

from aigw.v1 import otel_config_pb2 as _otel_config_pb2
from aigw.v1 import traces_pb2 as _traces_pb2
from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetOtelConfigRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetOtelConfigResponse(_message.Message):
    __slots__ = ("config", "version", "health")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    config: _otel_config_pb2.OtelConfig
    version: int
    health: _otel_config_pb2.OtelHealth
    def __init__(self, config: _Optional[_Union[_otel_config_pb2.OtelConfig, _Mapping]] = ..., version: _Optional[int] = ..., health: _Optional[_Union[_otel_config_pb2.OtelHealth, _Mapping]] = ...) -> None: ...

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

class GetTraceResponse(_message.Message):
    __slots__ = ("trace_id", "spans")
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    SPANS_FIELD_NUMBER: _ClassVar[int]
    trace_id: str
    spans: _containers.RepeatedCompositeFieldContainer[_traces_pb2.Span]
    def __init__(self, trace_id: _Optional[str] = ..., spans: _Optional[_Iterable[_Union[_traces_pb2.Span, _Mapping]]] = ...) -> None: ...
