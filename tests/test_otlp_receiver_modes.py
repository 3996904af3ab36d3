"""The test OTLP receivers themselves: they record what the official exporters send, fail and
black-hole on demand, and release a parked call when stopped."""

from __future__ import annotations

import threading
import time

import grpc
import httpx
import pytest
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcMetricExporter,
)
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http import Compression as OfficialHttpCompression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpProtobufSpanExporter,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExportResult,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from gateway.telemetry.export_outcome import (
    ExportOutcome,
    outcome_from_exception,
)
from gateway.telemetry.otlp_json import (
    OTLPJsonSpanExporter,
    encode_spans_json,
)
from tests.otlp_json_data import (
    expected_keys,
    make_metrics,
    make_spans,
)
from tests.otlp_receivers import (
    GrpcOtlpReceiver,
    HttpOtlpReceiver,
)

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(scope="module")
def spans() -> list[ReadableSpan]:
    return make_spans()


# --- the receivers themselves --------------------------------------------------------------


def test_grpc_receiver_records_official_exporters_with_metadata(
    spans: list[ReadableSpan],
) -> None:
    with GrpcOtlpReceiver() as rx:
        span_exporter = GrpcSpanExporter(
            endpoint=rx.endpoint, headers={"x-api-key": "k-123"}, timeout=5
        )
        data, _ = make_metrics(AggregationTemporality.DELTA)
        metric_exporter = GrpcMetricExporter(endpoint=rx.endpoint, timeout=5)
        try:
            assert span_exporter.export(spans) is SpanExportResult.SUCCESS
            assert metric_exporter.export(data) is MetricExportResult.SUCCESS
        finally:
            span_exporter.shutdown()
            metric_exporter.shutdown()

        traces, metrics = rx.requests
        assert traces.signal == "traces"
        assert traces.code is grpc.StatusCode.OK
        assert traces.metadata_dict["x-api-key"] == "k-123"
        assert traces.request == encode_spans(spans)
        assert sorted(rx.spans()) == expected_keys(spans)
        assert metrics.signal == "metrics"
        assert metrics.request == encode_metrics(data)
        assert rx.metric_points()["latency"][0].count == 1


def test_grpc_receiver_failure_and_black_hole_modes(spans: list[ReadableSpan]) -> None:
    request = encode_spans(spans)
    with GrpcOtlpReceiver() as rx, grpc.insecure_channel(rx.address) as channel:
        stub = trace_service_pb2_grpc.TraceServiceStub(channel)

        rx.fail_with(grpc.StatusCode.UNAUTHENTICATED, "bad token", times=1)
        with pytest.raises(grpc.RpcError) as failed:
            stub.Export(request, timeout=5)
        outcome = outcome_from_exception(failed.value)
        assert outcome == ExportOutcome(
            success=False,
            reason="grpc_unauthenticated",
            grpc_code="UNAUTHENTICATED",
            message="bad token",
        )

        rx.black_hole(times=1)
        with pytest.raises(grpc.RpcError) as hung:
            stub.Export(request, timeout=0.5)
        # A deadline reads as over HTTP: "timeout", whatever the transport.
        assert outcome_from_exception(hung.value).reason == "timeout"

        stub.Export(request, timeout=5)  # back to the standing mode: OK
        assert [r.code for r in rx.requests] == [
            grpc.StatusCode.UNAUTHENTICATED,
            None,
            grpc.StatusCode.OK,
        ]
        assert sorted(rx.spans()) == expected_keys(spans)  # only the acknowledged copy


def test_grpc_receiver_stop_releases_a_black_holed_call(spans: list[ReadableSpan]) -> None:
    rx = GrpcOtlpReceiver().start()
    rx.black_hole()
    channel = grpc.insecure_channel(rx.address)
    errors: list[grpc.StatusCode] = []

    def call() -> None:
        try:
            trace_service_pb2_grpc.TraceServiceStub(channel).Export(encode_spans(spans), timeout=20)
        except grpc.RpcError as exc:
            errors.append(exc.code())  # type: ignore[attr-defined]

    caller = threading.Thread(target=call)
    caller.start()
    rx.wait_for_requests(1)
    rx.stop()
    caller.join(5)
    channel.close()
    assert not caller.is_alive()
    assert len(errors) == 1
    assert errors[0] is not grpc.StatusCode.OK


def test_http_receiver_decodes_the_official_protobuf_exporter(
    http_rx: HttpOtlpReceiver, spans: list[ReadableSpan]
) -> None:
    exporter = HttpProtobufSpanExporter(
        endpoint=http_rx.traces_url,
        headers={"x-api-key": "k-456"},
        compression=OfficialHttpCompression.Gzip,
        timeout=5,
    )
    try:
        assert exporter.export(spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    (record,) = http_rx.requests
    assert record.content_type == "application/x-protobuf"
    assert record.content_encoding == "gzip"
    assert record.headers["x-api-key"] == "k-456"
    assert record.violations == ()
    assert record.request == encode_spans(spans)
    assert sorted(http_rx.spans()) == expected_keys(spans)


def test_http_receiver_rejects_json_with_the_wrong_content_type(
    http_rx: HttpOtlpReceiver, spans: list[ReadableSpan]
) -> None:
    response = httpx.post(
        http_rx.traces_url,
        content=encode_spans_json(spans),
        headers={"Content-Type": "text/plain"},
        timeout=5,
    )
    assert response.status_code == 400
    (record,) = http_rx.requests
    assert any("application/json" in v for v in record.violations)
    assert http_rx.spans() == []


def test_http_receiver_stop_releases_a_black_holed_request(spans: list[ReadableSpan]) -> None:
    rx = HttpOtlpReceiver().start()
    rx.black_hole()
    exporter = OTLPJsonSpanExporter(endpoint=rx.traces_url, timeout=20)
    results: list[SpanExportResult] = []
    worker = threading.Thread(target=lambda: results.append(exporter.export(spans)))
    worker.start()
    rx.wait_for_requests(1)
    started = time.monotonic()
    rx.stop()  # must not wait for the exporter's 20 s budget
    assert time.monotonic() - started < 5
    exporter.shutdown()
    worker.join(5)
    assert results == [SpanExportResult.FAILURE]
    assert rx.errors == []
