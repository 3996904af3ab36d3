"""A redirect is a failure, for every encoding, and is never followed.

The official OTLP/HTTP exporter counts any status below 400 as success, so a backend answering
``307`` used to show ``success: true`` in TestOtelConfig, spans counted as exported and health
green — while nothing was stored anywhere. Here a real HTTP server on 127.0.0.1 answers every
POST with ``307`` and a ``Location`` pointing at a second, working receiver: that receiver
must see nothing (a followed redirect would carry our credentials to it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from aigw.v1 import admin_pb2, admin_pb2_grpc, completion_pb2_grpc, otel_config_pb2
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.server import Gateway
from gateway.telemetry.export_outcome import reported_outcome
from gateway.telemetry.export_settings import ExporterSettings
from gateway.telemetry.otlp_exporters import build_metric_exporter, build_span_exporter
from tests.conftest import chat
from tests.otlp_receivers import HttpOtlpReceiver

HTTP = otel_config_pb2.PROTOCOL_HTTP
ENCODINGS = {"proto": otel_config_pb2.ENCODING_PROTO, "json": otel_config_pb2.ENCODING_JSON}
SECRET = "Bearer rdr-5ecret-0b1c2d3e4f"


@pytest.fixture
def target() -> Iterator[HttpOtlpReceiver]:
    """Where the redirect points: a working receiver that must never be reached."""
    with HttpOtlpReceiver() as rx:
        yield rx
    assert rx.errors == []


@pytest.fixture
def redirecting(target: HttpOtlpReceiver) -> Iterator[HttpOtlpReceiver]:
    with HttpOtlpReceiver() as rx:
        rx.respond_with(
            307, "moved", headers={"Location": target.url("/elsewhere/v1/traces?token=t0ps3cret")}
        )
        yield rx
    assert rx.errors == []


def expected_message(target: HttpOtlpReceiver) -> str:
    return (
        f"307 Temporary Redirect to {target.url('/elsewhere/v1/traces')}; "
        "redirects are not followed"
    )


@pytest.mark.parametrize("encoding", ["proto", "json"])
def test_every_encoding_reports_a_redirect_as_a_failure(
    redirecting: HttpOtlpReceiver, target: HttpOtlpReceiver, encoding: str
) -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.get_tracer("t").start_span("chat m").end()
    meters_reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[meters_reader])
    meters.get_meter("t").create_counter("c").add(1)
    data = meters_reader.get_metrics_data()

    def settings(url: str) -> ExporterSettings:
        return ExporterSettings(
            enabled=True,
            endpoint=url,
            encoding=encoding,  # type: ignore[arg-type]
            headers=(("authorization", SECRET),),
            timeout=2,
        )

    spans = build_span_exporter(settings(redirecting.traces_url))
    metrics = build_metric_exporter(settings(redirecting.metrics_url))
    try:
        span_result = spans.export(memory.get_finished_spans())
        metric_result = metrics.export(data, timeout_millis=2000)
        span_outcome = reported_outcome(spans, span_result is SpanExportResult.SUCCESS)
        metric_outcome = reported_outcome(metrics, metric_result is MetricExportResult.SUCCESS)
    finally:
        spans.shutdown()
        metrics.shutdown()
    assert span_result is SpanExportResult.FAILURE
    assert metric_result is MetricExportResult.FAILURE
    for outcome in (span_outcome, metric_outcome):
        assert outcome.reason == "http_3xx"
        assert outcome.http_status == 307
    assert span_outcome.message == expected_message(target)
    # One attempt each (a 3xx is not retried), nothing acknowledged, nothing followed.
    assert [r.status for r in redirecting.requests] == [307, 307]
    assert redirecting.spans() == []
    assert target.requests == []


async def test_test_otel_config_says_redirect_not_success(
    redirecting: HttpOtlpReceiver,
    target: HttpOtlpReceiver,
    gateway: Gateway,
    admin: admin_pb2_grpc.AdminServiceStub,
) -> None:
    for encoding in ENCODINGS.values():
        reply = await admin.TestOtelConfig(
            admin_pb2.TestOtelConfigRequest(
                config=otel_config_pb2.OtelConfig(
                    traces=otel_config_pb2.ExporterConfig(
                        protocol=HTTP, encoding=encoding, endpoint=redirecting.traces_url
                    ),
                    metrics=otel_config_pb2.ExporterConfig(
                        protocol=HTTP, encoding=encoding, endpoint=redirecting.metrics_url
                    ),
                )
            ),
            timeout=20,
        )
        for result in (reply.traces, reply.metrics):
            assert result.success is False, (encoding, result)
            assert result.reason == "http_3xx"
            assert result.http_status == 307
            assert "redirects are not followed" in result.message
            assert "t0ps3cret" not in result.message  # the Location's query is not echoed
    assert target.requests == []


@pytest.mark.parametrize("encoding", ["proto", "json"])
async def test_live_export_counts_redirected_spans_as_failed_and_health_shows_it(
    # The receivers first, so they outlive the gateway (its final flush finds them).
    redirecting: HttpOtlpReceiver,
    target: HttpOtlpReceiver,
    gateway: Gateway,
    channel: object,
    encoding: str,
) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    completion = completion_pb2_grpc.CompletionStub(channel)
    await admin.SetOtelConfig(
        admin_pb2.SetOtelConfigRequest(
            config=otel_config_pb2.OtelConfig(
                traces=otel_config_pb2.ExporterConfig(
                    enabled=True,
                    protocol=HTTP,
                    encoding=ENCODINGS[encoding],
                    endpoint=redirecting.traces_url,
                )
            )
        ),
        timeout=10,
    )
    for i in range(3):
        await completion.Complete(chat(f"call {i}"), timeout=5)
    assert gateway.telemetry is not None
    assert await asyncio.to_thread(gateway.telemetry.force_flush, 10)

    health = (await admin.GetOtelConfig(admin_pb2.GetOtelConfigRequest(), timeout=5)).health
    assert health.traces.exported == 0
    assert health.traces.failed >= 3
    assert health.traces.last_success_time.ToNanoseconds() == 0
    assert health.traces.last_error == f"http_3xx: {expected_message(target)}"
    results = gateway.telemetry.trace_stats.results()
    assert results[("failed", "http_3xx")] == health.traces.failed
    assert results[("success", "")] == 0
    assert redirecting.spans() == []
    assert target.requests == []
