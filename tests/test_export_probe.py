"""TestOtelConfig is a dry run: one attempt within the section's timeout, nothing logged above
DEBUG, the backend's error words capped at 1 KiB — and never a success body, from any host.

Everything goes through a real gateway's AdminService to real servers on 127.0.0.1.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import grpc
import pytest
from aigw.v1 import admin_pb2, admin_pb2_grpc, otel_config_pb2
from google.protobuf import duration_pb2

from gateway.server import Gateway
from tests.otlp_receivers import GrpcOtlpReceiver, HttpOtlpReceiver, refusing_endpoint

HTTP, GRPC = otel_config_pb2.PROTOCOL_HTTP, otel_config_pb2.PROTOCOL_GRPC
PROTO, JSON = otel_config_pb2.ENCODING_PROTO, otel_config_pb2.ENCODING_JSON
# (label, protocol, encoding): the three ways the gateway exports.
TRANSPORTS = [("http/proto", HTTP, PROTO), ("http/json", HTTP, JSON), ("grpc", GRPC, PROTO)]


@pytest.fixture
def http_rx() -> Iterator[HttpOtlpReceiver]:
    with HttpOtlpReceiver() as rx:
        yield rx
    assert rx.errors == []


@pytest.fixture
def grpc_rx() -> Iterator[GrpcOtlpReceiver]:
    with GrpcOtlpReceiver() as rx:
        yield rx


def section(
    protocol: int, encoding: int, endpoint: str, timeout: float = 10.0
) -> otel_config_pb2.ExporterConfig:
    seconds = int(timeout)
    return otel_config_pb2.ExporterConfig(
        protocol=protocol,
        encoding=encoding,
        endpoint=endpoint,
        timeout=duration_pb2.Duration(seconds=seconds, nanos=int((timeout - seconds) * 1e9)),
    )


async def test_a_closed_port_answers_within_the_timeout_and_logs_nothing(
    gateway: Gateway,
    admin: admin_pb2_grpc.AdminServiceStub,
    caplog: pytest.LogCaptureFixture,
) -> None:
    timeout = 3.0
    with refusing_endpoint() as url:
        base = url.removesuffix("/v1/traces")
        for label, protocol, encoding in TRANSPORTS:
            endpoint = base if protocol == GRPC else url
            caplog.clear()
            with caplog.at_level(logging.DEBUG):
                started = time.monotonic()
                reply = await admin.TestOtelConfig(
                    admin_pb2.TestOtelConfigRequest(
                        config=otel_config_pb2.OtelConfig(
                            traces=section(protocol, encoding, endpoint, timeout)
                        )
                    ),
                    timeout=30,
                )
                elapsed = time.monotonic() - started
            # A correctness bound on retries (the official exporters' schedule alone is
            # 1 + 2 + 4 s within a 10 s budget), not a benchmark.
            assert elapsed < timeout + 2, (label, elapsed)
            assert reply.traces.success is False
            assert reply.traces.reason == "connection_refused", (label, reply)
            assert reply.traces.message == f"connection refused ({base.split('//')[1]})"
            loud = [
                f"{r.levelname} {r.name}: {r.getMessage()}"
                for r in caplog.records
                if r.levelno > logging.DEBUG
            ]
            assert loud == [], label


async def test_exactly_one_attempt_per_section_for_every_transport(
    http_rx: HttpOtlpReceiver,
    grpc_rx: GrpcOtlpReceiver,
    gateway: Gateway,
    admin: admin_pb2_grpc.AdminServiceStub,
) -> None:
    # Retryable answers with no wait asked for: a live exporter would try again at once.
    http_rx.respond_with(503, "overloaded", headers={"Retry-After": "0"})
    grpc_rx.fail_with(grpc.StatusCode.UNAVAILABLE, "overloaded")
    for label, protocol, encoding in TRANSPORTS:
        rx = grpc_rx if protocol == GRPC else http_rx
        rx.clear()
        traces = grpc_rx.endpoint if protocol == GRPC else http_rx.traces_url
        metrics = grpc_rx.endpoint if protocol == GRPC else http_rx.metrics_url
        reply = await admin.TestOtelConfig(
            admin_pb2.TestOtelConfigRequest(
                config=otel_config_pb2.OtelConfig(
                    traces=section(protocol, encoding, traces),
                    metrics=section(protocol, encoding, metrics),
                )
            ),
            timeout=30,
        )
        for result in (reply.traces, reply.metrics):
            assert result.success is False, (label, result)
            assert result.message == "overloaded", (label, result)
        assert sorted(r.signal for r in rx.requests) == ["metrics", "traces"], label
    # A dry run: the live export health saw none of it.
    health = (await admin.GetOtelConfig(admin_pb2.GetOtelConfigRequest(), timeout=5)).health
    assert (health.traces.failed, health.metrics.failed) == (0, 0)
    assert (health.traces.last_error, health.metrics.last_error) == ("", "")


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"db_password=hunter2-internal", "text/plain"),
        (b'{"message": "internal config: token=abc123"}', "application/json"),
        (b"\x0a\x1binternal-protobuf-payload", "application/x-protobuf"),
    ],
    ids=["text", "json-message", "protobuf"],
)
async def test_a_success_body_is_never_returned(
    http_rx: HttpOtlpReceiver,
    gateway: Gateway,
    admin: admin_pb2_grpc.AdminServiceStub,
    body: bytes,
    content_type: str,
) -> None:
    # Any internal HTTP service that answers POST with 2xx looks like this to the gateway.
    http_rx.respond_with(200, body, content_type=content_type)
    for encoding in (PROTO, JSON):
        reply = await admin.TestOtelConfig(
            admin_pb2.TestOtelConfigRequest(
                config=otel_config_pb2.OtelConfig(
                    traces=section(HTTP, encoding, http_rx.traces_url),
                    metrics=section(HTTP, encoding, http_rx.metrics_url),
                )
            ),
            timeout=30,
        )
        for result in (reply.traces, reply.metrics):
            assert result.http_status == 200
            assert result.message == "", result
            assert b"internal" not in result.SerializeToString()


async def test_the_error_body_is_kept_but_capped_at_1_kib(
    http_rx: HttpOtlpReceiver,
    gateway: Gateway,
    admin: admin_pb2_grpc.AdminServiceStub,
) -> None:
    words = "quota exceeded for tenant acme; " + "détail " * 1000  # ~8 KiB, multi-byte
    http_rx.respond_with(429, words.encode())
    for encoding in (PROTO, JSON):
        reply = await admin.TestOtelConfig(
            admin_pb2.TestOtelConfigRequest(
                config=otel_config_pb2.OtelConfig(
                    traces=section(HTTP, encoding, http_rx.traces_url)
                )
            ),
            timeout=30,
        )
        result = reply.traces
        assert (result.success, result.reason, result.http_status) == (False, "http_4xx", 429)
        assert result.message.startswith("quota exceeded for tenant acme; détail détail")
        assert 1000 < len(result.message.encode()) <= 1024
        # Cut on a character boundary: still valid UTF-8, and a prefix of what was sent.
        assert words.startswith(result.message)
