"""What export puts in the log, and what it counts as lost.

- Quiet on success: no exporter logs anything above DEBUG for an export that worked (httpx
  used to log every OTLP/JSON POST at INFO).
- On failure, one line per state change — ok → failing (with the reason), failing → ok — not
  one per failed export, for every transport; the official exporters' own per-export
  WARNING/ERROR lines are demoted to DEBUG.
- A span ended while export is off is not a loss: a gateway that never enabled export shows
  nothing dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import grpc
import httpx
import pytest
from aigw.v1 import admin_pb2, admin_pb2_grpc, completion_pb2_grpc, otel_config_pb2
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.server import Gateway
from gateway.telemetry.export_outcome import ExportOutcome
from gateway.telemetry.export_stats import ExportStats
from gateway.telemetry.otlp_json import OTLPJsonSpanExporter
from tests.conftest import chat
from tests.otlp_receivers import GrpcOtlpReceiver, HttpOtlpReceiver

HTTP, GRPC = otel_config_pb2.PROTOCOL_HTTP, otel_config_pb2.PROTOCOL_GRPC
PROTO, JSON = otel_config_pb2.ENCODING_PROTO, otel_config_pb2.ENCODING_JSON
STATS_LOGGER = "gateway.telemetry.export_stats"


@pytest.fixture
def http_rx() -> Iterator[HttpOtlpReceiver]:
    with HttpOtlpReceiver() as rx:
        yield rx
    assert rx.errors == []


@pytest.fixture
def grpc_rx() -> Iterator[GrpcOtlpReceiver]:
    with GrpcOtlpReceiver() as rx:
        yield rx


def loud(caplog: pytest.LogCaptureFixture, level: int = logging.DEBUG) -> list[str]:
    return [
        f"{r.levelname} {r.name}: {r.getMessage()}" for r in caplog.records if r.levelno > level
    ]


def test_the_json_exporter_is_quiet_on_success_and_other_httpx_clients_are_untouched(
    http_rx: HttpOtlpReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.get_tracer("t").start_span("chat m").end()
    exporter = OTLPJsonSpanExporter(endpoint=http_rx.traces_url, timeout=5)
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            assert exporter.export(memory.get_finished_spans()) is SpanExportResult.SUCCESS
        exporter.shutdown()
        assert loud(caplog, logging.NOTSET) == []
        # The demotion is for our client's requests only: anyone else's httpx keeps its line.
        with httpx.Client() as other:
            other.post(http_rx.url("/not-otlp"), content=b"x")
    assert [r.name for r in caplog.records] == ["httpx"]
    assert "HTTP Request: POST" in caplog.records[0].getMessage()


CASES = [
    pytest.param(HTTP, PROTO, id="http-proto"),
    pytest.param(HTTP, JSON, id="http-json"),
    pytest.param(GRPC, PROTO, id="grpc"),
]


@pytest.mark.parametrize(("protocol", "encoding"), CASES)
async def test_failures_are_logged_once_per_state_change(
    http_rx: HttpOtlpReceiver,
    grpc_rx: GrpcOtlpReceiver,
    gateway: Gateway,
    channel: grpc.aio.Channel,
    caplog: pytest.LogCaptureFixture,
    protocol: int,
    encoding: int,
) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    completion = completion_pb2_grpc.CompletionStub(channel)
    assert gateway.telemetry is not None

    async def calls_then_flush(n: int) -> None:
        for i in range(n):
            await completion.Complete(chat(f"call {i}"), timeout=5)
            # One export per call, so every call is a separate failed (or good) export.
            assert await asyncio.to_thread(gateway.telemetry.force_flush, 10)

    if protocol == GRPC:
        grpc_rx.fail_with(grpc.StatusCode.UNAUTHENTICATED, "bad token")
        endpoint = grpc_rx.endpoint
    else:
        http_rx.respond_with(401, "invalid API key")
        endpoint = http_rx.traces_url
    await admin.SetOtelConfig(
        admin_pb2.SetOtelConfigRequest(
            config=otel_config_pb2.OtelConfig(
                traces=otel_config_pb2.ExporterConfig(
                    enabled=True, protocol=protocol, encoding=encoding, endpoint=endpoint
                )
            )
        ),
        timeout=10,
    )
    with caplog.at_level(logging.INFO):
        await calls_then_flush(4)
        health = (await admin.GetOtelConfig(admin_pb2.GetOtelConfigRequest(), timeout=5)).health
        assert health.traces.failed >= 4
        reason, words = (
            ("grpc_unauthenticated", "bad token")
            if protocol == GRPC
            else ("http_4xx", "invalid API key")
        )
        assert loud(caplog, logging.INFO) == [
            f"WARNING {STATS_LOGGER}: OTLP traces export failing: {reason}: {words}"
        ]

        caplog.clear()
        grpc_rx.respond_ok()
        http_rx.respond_ok()
        await calls_then_flush(3)
        messages = [(r.levelname, r.name, r.getMessage()) for r in caplog.records]
        assert len(messages) == 1, messages
        level, name, text = messages[0]
        assert (level, name) == ("INFO", STATS_LOGGER)
        assert text.startswith("OTLP traces export recovered after ")
        assert text.endswith(" failed export(s)")


async def test_a_gateway_that_never_enabled_export_has_dropped_nothing(
    gateway: Gateway, channel: grpc.aio.Channel
) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(channel)
    completion = completion_pb2_grpc.CompletionStub(channel)
    for i in range(5):
        await completion.Complete(chat(f"call {i}"), timeout=5)
    await admin.ListTraces(admin_pb2.ListTracesRequest(page_size=5), timeout=5)
    assert gateway.telemetry is not None
    assert await asyncio.to_thread(gateway.telemetry.force_flush, 10)
    health = (await admin.GetOtelConfig(admin_pb2.GetOtelConfigRequest(), timeout=5)).health
    assert (health.traces.exported, health.traces.failed, health.traces.dropped) == (0, 0, 0)
    assert gateway.telemetry.trace_stats.dropped() == {("queue_full",): 0}


def test_state_changes_of_export_stats(caplog: pytest.LogCaptureFixture) -> None:
    stats = ExportStats("traces")
    refused = ExportOutcome(
        success=False, reason="connection_refused", message="connection refused (a:1)"
    )
    timeout = ExportOutcome(success=False, reason="timeout", message="timed out (a:1)")
    ok = ExportOutcome(success=True, http_status=200)
    with caplog.at_level(logging.DEBUG, logger=STATS_LOGGER):
        stats.record(ok, 1)  # ok → ok: nothing
        for _ in range(5):
            stats.record(refused, 1)  # one line, not five
        stats.record(timeout, 1)  # failing for another reason
        stats.exporter_changed()  # re-pointed while failing: the new exporter's first failure
        stats.record(timeout, 1)
        stats.record(timeout, 1)
        stats.record(ok, 1)
        stats.record(ok, 1)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "OTLP traces export failing: connection_refused: connection refused (a:1)"),
        ("WARNING", "OTLP traces export failing: timeout: timed out (a:1)"),
        ("WARNING", "OTLP traces export failing: timeout: timed out (a:1)"),
        ("INFO", "OTLP traces export recovered after 8 failed export(s)"),
    ]
