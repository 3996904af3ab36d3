"""The OTLP/JSON span and metric exporters against a real HTTP receiver (compression, headers,
temporality, retries, timeouts, shutdown), and ExportOutcome's reading of an answer."""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

import grpc
import pytest
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.metrics import (
    Counter,
    MeterProvider,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from gateway.telemetry.export_outcome import (
    MESSAGE_LIMIT,
    REDACTED,
    ExportOutcome,
    outcome_from_exception,
    outcome_from_grpc,
    outcome_from_http,
)
from gateway.telemetry.otlp_json import (
    OTLPJsonMetricExporter,
    OTLPJsonSpanExporter,
)
from tests.otlp_json_data import (
    expected_keys,
    make_metrics,
    make_spans,
)
from tests.otlp_receivers import (
    HttpOtlpReceiver,
    refusing_endpoint,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def spans() -> list[ReadableSpan]:
    return make_spans()


# --- exporters against the HTTP receiver ---------------------------------------------------


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_span_exporter_delivers_spec_json_with_headers(
    http_rx: HttpOtlpReceiver, spans: list[ReadableSpan], compression: Any
) -> None:
    exporter = OTLPJsonSpanExporter(
        endpoint=http_rx.url("/otlp/v1/traces"),
        headers={"Authorization": "Bearer t0ken-abcdef", "X-Tenant": "acme"},
        timeout=5,
        compression=compression,
    )
    try:
        assert exporter.export(spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()

    (record,) = http_rx.requests
    assert record.path == "/otlp/v1/traces"
    assert record.violations == ()
    assert record.content_type == "application/json"
    assert record.headers["authorization"] == "Bearer t0ken-abcdef"
    assert record.headers["x-tenant"] == "acme"
    assert record.content_encoding == ("gzip" if compression == "gzip" else "")
    assert record.request == encode_spans(spans)
    assert sorted(http_rx.spans()) == expected_keys(spans)  # each span exactly once
    assert exporter.last_outcome == ExportOutcome(success=True, http_status=200)


@pytest.mark.parametrize(
    ("preferred", "expected"),
    [
        ({Counter: AggregationTemporality.DELTA}, 1),
        (None, 2),
    ],
    ids=["delta", "default-cumulative"],
)
def test_metric_exporter_honours_preferred_temporality(
    http_rx: HttpOtlpReceiver, preferred: dict[type, AggregationTemporality] | None, expected: int
) -> None:
    exporter = OTLPJsonMetricExporter(
        endpoint=http_rx.metrics_url, timeout=5, preferred_temporality=preferred
    )
    # An infinite interval starts no background thread: exports happen only when we flush.
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=math.inf)
    provider = MeterProvider(metric_readers=[reader])
    provider.get_meter("aigw.test").create_counter("requests").add(4, {"route": "chat"})
    try:
        assert provider.force_flush(timeout_millis=5_000)
    finally:
        provider.shutdown()

    first = http_rx.requests[0]
    assert first.violations == ()
    assert (
        first.json["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["sum"][
            "aggregationTemporality"
        ]
        == expected
    )
    assert http_rx.metric_points()["requests"][0].as_int == 4
    assert exporter.last_outcome is not None
    assert exporter.last_outcome.success


def test_metric_exporter_exports_data_directly(http_rx: HttpOtlpReceiver) -> None:
    data, _ = make_metrics(AggregationTemporality.CUMULATIVE)
    exporter = OTLPJsonMetricExporter(endpoint=http_rx.metrics_url, timeout=5, compression="gzip")
    try:
        assert exporter.export(data, timeout_millis=5_000) is MetricExportResult.SUCCESS
        assert exporter.force_flush() is True
    finally:
        exporter.shutdown()
    (record,) = http_rx.requests
    assert record.request == encode_metrics(data)
    assert sorted(http_rx.metric_points()) == [
        "inflight",
        "latency",
        "queue_depth",
        "requests",
        "temperature",
    ]


def test_401_fails_at_once_with_the_backend_message(
    http_rx: HttpOtlpReceiver, spans: list[ReadableSpan]
) -> None:
    http_rx.respond_with(401, "invalid API key")
    exporter = OTLPJsonSpanExporter(endpoint=http_rx.traces_url, timeout=5)
    assert exporter.export(spans) is SpanExportResult.FAILURE
    exporter.shutdown()
    assert exporter.last_outcome == ExportOutcome(
        success=False, reason="http_4xx", http_status=401, message="invalid API key"
    )
    assert len(http_rx.requests) == 1  # 401 is not retryable
    assert http_rx.spans() == []


def test_backend_message_and_logs_never_contain_sent_header_values(
    http_rx: HttpOtlpReceiver, spans: list[ReadableSpan], caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk-live-0123456789abcdef"
    http_rx.respond_with(
        403, f"key 'Bearer {secret}' for tenant acme-tenant-77 is revoked ({secret})" + "x" * 5000
    )
    exporter = OTLPJsonSpanExporter(
        endpoint=http_rx.traces_url,
        headers={"Authorization": f"Bearer {secret}", "X-Tenant": "acme-tenant-77"},
        timeout=5,
    )
    with caplog.at_level(logging.DEBUG):
        assert exporter.export(spans) is SpanExportResult.FAILURE
    exporter.shutdown()
    outcome = exporter.last_outcome
    assert outcome is not None
    assert outcome.message.startswith(f"key '{REDACTED}' for tenant {REDACTED} is revoked")
    assert len(outcome.message) == MESSAGE_LIMIT
    for text in [outcome.message, caplog.text]:
        assert secret not in text
        assert "acme-tenant-77" not in text


def test_503_then_200_is_retried_to_success(
    http_rx: HttpOtlpReceiver, spans: list[ReadableSpan]
) -> None:
    http_rx.respond_with(503, "overloaded", times=1)
    exporter = OTLPJsonSpanExporter(endpoint=http_rx.traces_url, timeout=10)
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    exporter.shutdown()
    assert [r.status for r in http_rx.requests] == [503, 200]
    assert sorted(http_rx.spans()) == expected_keys(spans)  # the 503'd copy is not counted
    assert exporter.last_outcome == ExportOutcome(success=True, http_status=200)


def test_retry_after_beyond_the_budget_gives_up_without_waiting(
    http_rx: HttpOtlpReceiver, spans: list[ReadableSpan]
) -> None:
    # Without honouring Retry-After, the 0.5 s exponential backoff would retry within budget.
    http_rx.respond_with(429, "slow down", headers={"Retry-After": "60"})
    exporter = OTLPJsonSpanExporter(endpoint=http_rx.traces_url, timeout=3)
    started = time.monotonic()
    assert exporter.export(spans) is SpanExportResult.FAILURE
    assert time.monotonic() - started < 2.5  # did not sit out the budget
    exporter.shutdown()
    assert len(http_rx.requests) == 1
    assert exporter.last_outcome == ExportOutcome(
        success=False, reason="http_4xx", http_status=429, message="slow down"
    )


def test_black_hole_fails_with_timeout_within_the_budget(
    http_rx: HttpOtlpReceiver, spans: list[ReadableSpan]
) -> None:
    http_rx.black_hole()
    exporter = OTLPJsonSpanExporter(endpoint=http_rx.traces_url, timeout=1)
    started = time.monotonic()
    assert exporter.export(spans) is SpanExportResult.FAILURE
    assert time.monotonic() - started < 5
    exporter.shutdown()
    assert exporter.last_outcome is not None
    assert exporter.last_outcome.reason == "timeout"
    assert http_rx.requests[0].status is None  # arrived, never answered


def test_refused_connection_reports_connection_refused(spans: list[ReadableSpan]) -> None:
    with refusing_endpoint("/v1/traces") as url:
        exporter = OTLPJsonSpanExporter(endpoint=url, timeout=1)
        started = time.monotonic()
        assert exporter.export(spans) is SpanExportResult.FAILURE
        assert time.monotonic() - started < 5
        exporter.shutdown()
    outcome = exporter.last_outcome
    assert outcome is not None
    assert outcome.reason == "connection_refused"
    assert outcome.http_status == 0
    # One message shape whatever the library (tests/test_export_errors.py compares them).
    assert outcome.message == f"connection refused ({url.split('/')[2]})"


def test_shutdown_aborts_a_retry_wait(http_rx: HttpOtlpReceiver, spans: list[ReadableSpan]) -> None:
    http_rx.respond_with(503, "busy", headers={"Retry-After": "20"})
    exporter = OTLPJsonSpanExporter(endpoint=http_rx.traces_url, timeout=30)
    results: list[SpanExportResult] = []
    worker = threading.Thread(target=lambda: results.append(exporter.export(spans)))
    worker.start()
    http_rx.wait_for_requests(1)
    exporter.shutdown()
    worker.join(5)
    assert not worker.is_alive(), "export() kept waiting after shutdown()"
    assert results == [SpanExportResult.FAILURE]
    assert len(http_rx.requests) == 1
    # The in-flight attempt finished normally, so the outcome is the backend's real answer.
    assert exporter.last_outcome is not None
    assert exporter.last_outcome.http_status == 503


def test_export_after_shutdown_fails_without_network(
    http_rx: HttpOtlpReceiver, spans: list[ReadableSpan]
) -> None:
    exporter = OTLPJsonSpanExporter(endpoint=http_rx.traces_url, timeout=5)
    exporter.shutdown()
    exporter.shutdown()  # idempotent
    assert exporter.export(spans) is SpanExportResult.FAILURE
    assert exporter.last_outcome is not None
    assert not exporter.last_outcome.success
    assert exporter.force_flush() is True
    metric_exporter = OTLPJsonMetricExporter(endpoint=http_rx.metrics_url, timeout=5)
    metric_exporter.shutdown()
    metric_exporter.shutdown()
    assert metric_exporter.export(MetricsData(resource_metrics=[])) is MetricExportResult.FAILURE
    assert http_rx.requests == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"endpoint": "ftp://127.0.0.1/v1/traces"},
        {"endpoint": "/v1/traces"},
        {"endpoint": "http://127.0.0.1/v1/traces", "timeout": 0},
        {"endpoint": "http://127.0.0.1/v1/traces", "timeout": math.nan},
        {"endpoint": "http://127.0.0.1/v1/traces", "compression": "br"},
    ],
)
def test_invalid_configuration_is_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 (each case has its own message)
        OTLPJsonSpanExporter(**kwargs)


# --- ExportOutcome -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "success", "reason"),
    [
        (200, True, ""),
        (204, True, ""),
        (302, False, "http_3xx"),  # a redirect is a failure, never followed
        (404, False, "http_4xx"),
        (500, False, "http_5xx"),
        (504, False, "http_5xx"),
    ],
)
def test_outcome_from_http_status(status: int, success: bool, reason: str) -> None:
    outcome = outcome_from_http(status, b"")
    assert (outcome.success, outcome.reason, outcome.http_status) == (success, reason, status)


def test_outcome_extracts_google_rpc_status_messages() -> None:
    proto_body = status_pb2.Status(code=3, message="bad span").SerializeToString()
    assert outcome_from_http(400, proto_body, content_type="application/x-protobuf").message == (
        "bad span"
    )
    json_body = b'{"code": 16, "message": "invalid key"}'
    assert outcome_from_http(401, json_body, content_type="application/json").message == (
        "invalid key"
    )
    assert outcome_from_http(502, b"<html>bad gateway</html>").message == (
        "<html>bad gateway</html>"
    )


def test_outcome_reasons_stay_low_cardinality() -> None:
    with pytest.raises(ValueError, match="invalid failure reason"):
        ExportOutcome(success=False, reason="http_401")
    with pytest.raises(ValueError, match="no reason"):
        ExportOutcome(success=True, reason="timeout")
    assert len(ExportOutcome(success=False, reason="unknown", message="x" * 5000).message) == 1024
    assert outcome_from_grpc(grpc.StatusCode.UNAVAILABLE, "down").reason == "grpc_unavailable"
    assert outcome_from_grpc(grpc.StatusCode.OK).success
    assert outcome_from_exception(TimeoutError()).reason == "timeout"
    assert outcome_from_exception(ValueError("odd")).message == "ValueError: odd"
