"""Builds the OTLP exporter for a protocol × encoding, each reporting its last `ExportOutcome`.

- HTTP + protobuf: the official exporters, handed a `requests.Session` that keeps the backend's
  last answer (status and body) or the transport error;
- gRPC: the official exporters, with their channel wrapped in an interceptor that keeps the
  last status code and details;
- HTTP + JSON: ours (`otlp_json`), since the released SDK has none.

The official exporters only say SUCCESS or FAILURE; operators need the backend's own words
("401 invalid API key") in `GetOtelConfig` health and `TestOtelConfig`, and the self-metrics
need a reason label. Header values are redacted from every message kept.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import grpc
import requests
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcMetricExporter,
)
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.trace.export import SpanExporter

from gateway.telemetry.export_outcome import (
    ExportOutcome,
    outcome_from_grpc,
    outcome_from_http,
    redact,
)
from gateway.telemetry.export_settings import ExporterSettings
from gateway.telemetry.metric_export import temporality_preference
from gateway.telemetry.otlp_json import OTLPJsonMetricExporter, OTLPJsonSpanExporter

__all__ = ["build_metric_exporter", "build_span_exporter"]


class _RecordingSession(requests.Session):
    """Keeps what the backend answered to the last request made on this thread."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__()
        self._secrets = secrets
        self._last = threading.local()

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        try:
            response = super().request(method, url, *args, **kwargs)
        except requests.Timeout as e:
            self._last.outcome = _failure("timeout", str(e), self._secrets)
            raise
        except requests.ConnectionError as e:
            self._last.outcome = _failure("connection_refused", str(e), self._secrets)
            raise
        except Exception as e:
            self._last.outcome = _failure("unknown", f"{type(e).__name__}: {e}", self._secrets)
            raise
        self._last.outcome = outcome_from_http(
            response.status_code,
            response.content,
            content_type=response.headers.get("content-type", ""),
            secrets=self._secrets,
        )
        return response

    def take(self) -> ExportOutcome | None:
        outcome = getattr(self._last, "outcome", None)
        self._last.outcome = None
        return outcome


def _failure(reason: str, message: str, secrets: tuple[str, ...]) -> ExportOutcome:
    # Redacted before ExportOutcome caps it, so no half-secret survives the cut.
    return ExportOutcome(success=False, reason=reason, message=redact(message, secrets))


class _StatusRecorder(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, secrets: tuple[str, ...]) -> None:
        self._secrets = secrets
        self._last = threading.local()

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        call = continuation(client_call_details, request)
        code = call.code()
        details = call.details() or ""
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            self._last.outcome = _failure("timeout", details, self._secrets)
        elif code is grpc.StatusCode.UNAVAILABLE and "connect" in details.lower():
            self._last.outcome = _failure("connection_refused", details, self._secrets)
        else:
            self._last.outcome = outcome_from_grpc(code, details, secrets=self._secrets)
        return call

    def take(self) -> ExportOutcome | None:
        outcome = getattr(self._last, "outcome", None)
        self._last.outcome = None
        return outcome


def _recorded_grpc(base: type) -> type:
    """A subclass of an official gRPC exporter whose channel records every status."""

    class Recorded(base):  # type: ignore[misc, valid-type]
        def __init__(self, *, recorder: _StatusRecorder, **kwargs: Any) -> None:
            self._recorder = recorder
            super().__init__(**kwargs)

        def _initialize_channel_and_stub(self) -> None:
            super()._initialize_channel_and_stub()
            # The exporter re-creates its channel after UNAVAILABLE; every channel is wrapped.
            self._client = self._stub(grpc.intercept_channel(self._channel, self._recorder))

        @property
        def last_outcome(self) -> ExportOutcome | None:
            return self._recorder.take()

    Recorded.__name__ = Recorded.__qualname__ = f"Recorded{base.__name__}"
    return Recorded


_RecordedGrpcSpanExporter = _recorded_grpc(GrpcSpanExporter)
_RecordedGrpcMetricExporter = _recorded_grpc(GrpcMetricExporter)


def _recorded_http(base: type) -> type:
    class Recorded(base):  # type: ignore[misc, valid-type]
        def __init__(self, *, session: _RecordingSession, **kwargs: Any) -> None:
            self._recording_session = session
            super().__init__(session=session, **kwargs)

        @property
        def last_outcome(self) -> ExportOutcome | None:
            return self._recording_session.take()

    Recorded.__name__ = Recorded.__qualname__ = f"Recorded{base.__name__}"
    return Recorded


_RecordedHttpSpanExporter = _recorded_http(HttpSpanExporter)
_RecordedHttpMetricExporter = _recorded_http(HttpMetricExporter)


def _build(
    settings: ExporterSettings, grpc_cls: type, json_cls: type, http_cls: type, **extra: Any
) -> Any:
    headers = settings.header_dict
    secrets = tuple(v for v in headers.values() if v)
    gzip = settings.compression == "gzip"
    common = {
        "endpoint": settings.endpoint,
        "headers": headers,
        "timeout": settings.timeout,
        **extra,
    }
    if settings.protocol == "grpc":
        compression = grpc.Compression.Gzip if gzip else grpc.Compression.NoCompression
        return grpc_cls(recorder=_StatusRecorder(secrets), compression=compression, **common)
    if settings.encoding == "json":
        return json_cls(compression=settings.compression, **common)
    compression = HttpCompression.Gzip if gzip else HttpCompression.NoCompression
    return http_cls(session=_RecordingSession(secrets), compression=compression, **common)


def build_span_exporter(settings: ExporterSettings) -> SpanExporter:
    return _build(
        settings, _RecordedGrpcSpanExporter, OTLPJsonSpanExporter, _RecordedHttpSpanExporter
    )


def build_metric_exporter(settings: ExporterSettings) -> MetricExporter:
    return _build(
        settings,
        _RecordedGrpcMetricExporter,
        OTLPJsonMetricExporter,
        _RecordedHttpMetricExporter,
        preferred_temporality=temporality_preference(settings.temporality),
    )
