import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Protocol(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTOCOL_UNSPECIFIED: _ClassVar[Protocol]
    PROTOCOL_HTTP: _ClassVar[Protocol]
    PROTOCOL_GRPC: _ClassVar[Protocol]

class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENCODING_UNSPECIFIED: _ClassVar[Encoding]
    ENCODING_PROTO: _ClassVar[Encoding]
    ENCODING_JSON: _ClassVar[Encoding]

class Compression(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPRESSION_UNSPECIFIED: _ClassVar[Compression]
    COMPRESSION_NONE: _ClassVar[Compression]
    COMPRESSION_GZIP: _ClassVar[Compression]

class TlsVersion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TLS_VERSION_UNSPECIFIED: _ClassVar[TlsVersion]
    TLS_VERSION_1_2: _ClassVar[TlsVersion]
    TLS_VERSION_1_3: _ClassVar[TlsVersion]

class Temporality(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TEMPORALITY_UNSPECIFIED: _ClassVar[Temporality]
    TEMPORALITY_CUMULATIVE: _ClassVar[Temporality]
    TEMPORALITY_DELTA: _ClassVar[Temporality]
PROTOCOL_UNSPECIFIED: Protocol
PROTOCOL_HTTP: Protocol
PROTOCOL_GRPC: Protocol
ENCODING_UNSPECIFIED: Encoding
ENCODING_PROTO: Encoding
ENCODING_JSON: Encoding
COMPRESSION_UNSPECIFIED: Compression
COMPRESSION_NONE: Compression
COMPRESSION_GZIP: Compression
TLS_VERSION_UNSPECIFIED: TlsVersion
TLS_VERSION_1_2: TlsVersion
TLS_VERSION_1_3: TlsVersion
TEMPORALITY_UNSPECIFIED: Temporality
TEMPORALITY_CUMULATIVE: Temporality
TEMPORALITY_DELTA: Temporality

class OtelConfig(_message.Message):
    __slots__ = ("traces", "metrics")
    TRACES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    traces: ExporterConfig
    metrics: ExporterConfig
    def __init__(self, traces: _Optional[_Union[ExporterConfig, _Mapping]] = ..., metrics: _Optional[_Union[ExporterConfig, _Mapping]] = ...) -> None: ...

class ExporterConfig(_message.Message):
    __slots__ = ("enabled", "protocol", "endpoint", "encoding", "headers", "timeout", "compression", "export_interval", "temporality", "tls", "warnings")
    class HeadersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    EXPORT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    TEMPORALITY_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    protocol: Protocol
    endpoint: str
    encoding: Encoding
    headers: _containers.ScalarMap[str, str]
    timeout: _duration_pb2.Duration
    compression: Compression
    export_interval: _duration_pb2.Duration
    temporality: Temporality
    tls: TlsConfig
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, enabled: _Optional[bool] = ..., protocol: _Optional[_Union[Protocol, str]] = ..., endpoint: _Optional[str] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., headers: _Optional[_Mapping[str, str]] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., compression: _Optional[_Union[Compression, str]] = ..., export_interval: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., temporality: _Optional[_Union[Temporality, str]] = ..., tls: _Optional[_Union[TlsConfig, _Mapping]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class TlsConfig(_message.Message):
    __slots__ = ("ca_pem", "client_cert_pem", "client_key_pem", "server_name", "min_version", "insecure_skip_verify")
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    CLIENT_CERT_PEM_FIELD_NUMBER: _ClassVar[int]
    CLIENT_KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    INSECURE_SKIP_VERIFY_FIELD_NUMBER: _ClassVar[int]
    ca_pem: str
    client_cert_pem: str
    client_key_pem: str
    server_name: str
    min_version: TlsVersion
    insecure_skip_verify: bool
    def __init__(self, ca_pem: _Optional[str] = ..., client_cert_pem: _Optional[str] = ..., client_key_pem: _Optional[str] = ..., server_name: _Optional[str] = ..., min_version: _Optional[_Union[TlsVersion, str]] = ..., insecure_skip_verify: _Optional[bool] = ...) -> None: ...

class ExporterHealth(_message.Message):
    __slots__ = ("last_success_time", "last_error_time", "last_error", "exported", "failed", "dropped")
    LAST_SUCCESS_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    EXPORTED_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    last_success_time: _timestamp_pb2.Timestamp
    last_error_time: _timestamp_pb2.Timestamp
    last_error: str
    exported: int
    failed: int
    dropped: int
    def __init__(self, last_success_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_error_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_error: _Optional[str] = ..., exported: _Optional[int] = ..., failed: _Optional[int] = ..., dropped: _Optional[int] = ...) -> None: ...

class OtelHealth(_message.Message):
    __slots__ = ("traces", "metrics")
    TRACES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    traces: ExporterHealth
    metrics: ExporterHealth
    def __init__(self, traces: _Optional[_Union[ExporterHealth, _Mapping]] = ..., metrics: _Optional[_Union[ExporterHealth, _Mapping]] = ...) -> None: ...
