"""One translation point for exporter failures: the same failure reads the same over
HTTP/protobuf (requests), HTTP/JSON (httpx) and gRPC, against real sockets on 127.0.0.1.

Each case runs the exporters the gateway runs (`build_span_exporter`, retries included, with a
short budget) and compares what `last_outcome` says — reason, message, status fields — across
the three transports, so a library's wording can never leak back into health or metrics.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.telemetry.export_outcome import (
    MESSAGE_LIMIT,
    ExportOutcome,
    endpoint_address,
    outcome_from_grpc,
    outcome_from_http,
    reported_outcome,
)
from gateway.telemetry.export_settings import ExporterSettings
from gateway.telemetry.otlp_exporters import build_span_exporter
from tests.otlp_receivers import (
    GrpcOtlpReceiver,
    HttpOtlpReceiver,
    refusing_endpoint,
    untrusted_tls_endpoint,
)

# (protocol, encoding): the three ways the gateway exports.
TRANSPORTS = [("http", "proto"), ("http", "json"), ("grpc", "proto")]


@pytest.fixture(scope="module")
def spans() -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.get_tracer("t").start_span("chat m").end()
    provider.shutdown()
    return list(memory.get_finished_spans())


@pytest.fixture
def http_rx() -> Iterator[HttpOtlpReceiver]:
    with HttpOtlpReceiver() as rx:
        yield rx
    assert rx.errors == []


def export(
    spans: list[ReadableSpan], protocol: str, encoding: str, endpoint: str, timeout: float = 0.5
) -> ExportOutcome:
    """What a live exporter (retries and all) reports after one export."""
    settings = ExporterSettings(
        enabled=True, protocol=protocol, encoding=encoding, endpoint=endpoint, timeout=timeout
    )  # type: ignore[arg-type]
    exporter = build_span_exporter(settings)
    try:
        ok = exporter.export(spans) is SpanExportResult.SUCCESS
        return reported_outcome(exporter, ok)
    finally:
        exporter.shutdown()


def base(url: str) -> str:
    """scheme://host:port of an HTTP URL: the gRPC endpoint for the same listener."""
    return url.rsplit("/v1/", 1)[0]


# --- the same failure, three transports ----------------------------------------------------


def test_connection_refused_reads_the_same_over_every_transport(
    spans: list[ReadableSpan],
) -> None:
    with refusing_endpoint() as url:
        address = endpoint_address(url)
        outcomes = {
            (p, e): export(spans, p, e, url if p == "http" else base(url)) for p, e in TRANSPORTS
        }
    for transport, outcome in outcomes.items():
        assert outcome.reason == "connection_refused", (transport, outcome)
        assert outcome.message == f"connection refused ({address})", (transport, outcome)
        assert outcome.http_status == 0
    # The gRPC status code is kept beside the reason: it is what the channel reported.
    assert outcomes[("grpc", "proto")].grpc_code == "UNAVAILABLE"


def test_a_backend_that_never_answers_reads_as_timeout_everywhere(
    spans: list[ReadableSpan], http_rx: HttpOtlpReceiver
) -> None:
    http_rx.black_hole()
    with GrpcOtlpReceiver() as grpc_rx:
        grpc_rx.black_hole()
        outcomes = {
            ("http", "proto"): export(spans, "http", "proto", http_rx.traces_url),
            ("http", "json"): export(spans, "http", "json", http_rx.traces_url),
            ("grpc", "proto"): export(spans, "grpc", "proto", grpc_rx.endpoint),
        }
        grpc_address = endpoint_address(grpc_rx.endpoint)
    http_address = endpoint_address(http_rx.traces_url)
    for (protocol, encoding), outcome in outcomes.items():
        address = http_address if protocol == "http" else grpc_address
        assert outcome.reason == "timeout", (protocol, encoding, outcome)
        assert outcome.message == f"timed out ({address})", (protocol, encoding, outcome)


def test_an_untrusted_certificate_fails_with_the_verifiers_words(
    spans: list[ReadableSpan],
) -> None:
    with untrusted_tls_endpoint() as url:
        address = endpoint_address(url)
        outcomes = {
            (p, e): export(spans, p, e, url if p == "http" else base(url), timeout=1)
            for p, e in TRANSPORTS
        }
    for transport, outcome in outcomes.items():
        assert outcome.reason == "tls", (transport, outcome)
        # OpenSSL says "self-signed", gRPC's BoringSSL "self signed": the verifier's own words.
        assert outcome.message.startswith("certificate verify failed: self"), (transport, outcome)
        assert "signed certificate" in outcome.message
        assert outcome.message.endswith(f"({address})"), (transport, outcome)


# --- what the backend answered -------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["proto", "json"])
def test_an_http_error_keeps_the_backends_words_on_one_line(
    spans: list[ReadableSpan], http_rx: HttpOtlpReceiver, encoding: str
) -> None:
    http_rx.respond_with(403, "tenant suspended\r\nX-Injected: yes\n\n<b>contact support</b>")
    outcome = export(spans, "http", encoding, http_rx.traces_url)
    assert outcome == ExportOutcome(
        success=False,
        reason="http_4xx",
        http_status=403,
        message="tenant suspended X-Injected: yes <b>contact support</b>",
    )


@pytest.mark.parametrize("encoding", ["proto", "json"])
def test_an_empty_error_body_gives_the_status_line(
    spans: list[ReadableSpan], http_rx: HttpOtlpReceiver, encoding: str
) -> None:
    http_rx.respond_with(404)
    assert export(spans, "http", encoding, http_rx.traces_url).message == "404 Not Found"


def test_a_grpc_status_the_backend_answered_keeps_its_code_and_details(
    spans: list[ReadableSpan],
) -> None:
    with GrpcOtlpReceiver() as rx:
        # UNAVAILABLE from the backend itself (not a connect failure) stays grpc_unavailable.
        rx.fail_with(grpc.StatusCode.UNAVAILABLE, "ingest paused for maintenance")
        unavailable = export(spans, "grpc", "proto", rx.endpoint, timeout=0.3)
        rx.fail_with(grpc.StatusCode.PERMISSION_DENIED, "")
        denied = export(spans, "grpc", "proto", rx.endpoint)
    assert (unavailable.reason, unavailable.message) == (
        "grpc_unavailable",
        "ingest paused for maintenance",
    )
    assert (denied.reason, denied.grpc_code, denied.message) == (
        "grpc_permission_denied",
        "PERMISSION_DENIED",
        "PERMISSION_DENIED",  # no details: the code, never an empty message
    )


# --- the builders on their own -------------------------------------------------------------


def test_a_success_body_is_never_kept() -> None:
    outcome = outcome_from_http(200, b"internal: admin password is hunter22")
    assert outcome == ExportOutcome(success=True, http_status=200)


def test_messages_are_capped_in_bytes_after_redaction() -> None:
    secret = "sk-live-" + "9" * 24
    body = "é" * 600 + f" key {secret}"  # 1200 bytes before the key
    outcome = outcome_from_http(401, body.encode(), secrets=[secret])
    assert len(outcome.message.encode()) <= MESSAGE_LIMIT
    assert outcome.message.startswith("éé")
    assert "sk-live" not in outcome.message
    # A multi-byte character is never cut in half.
    outcome.message.encode().decode("utf-8")


def test_a_redirect_names_where_it_points_without_credentials_or_query() -> None:
    outcome = outcome_from_http(
        308, b"<html>moved</html>", location="https://user:pw@otlp.example:8443/v1/traces?tok=abc"
    )
    assert outcome.reason == "http_3xx"
    assert outcome.message == (
        "308 Permanent Redirect to https://otlp.example:8443/v1/traces; redirects are not followed"
    )
    assert (
        outcome_from_http(302).message == "302 Found without a Location; redirects are not followed"
    )


def test_grpc_transport_failures_read_as_their_http_twins() -> None:
    address = "collector:4317"
    deadline = outcome_from_grpc(
        grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", address=address
    )
    assert (deadline.reason, deadline.message) == ("timeout", "timed out (collector:4317)")
    dns = outcome_from_grpc(
        grpc.StatusCode.UNAVAILABLE,
        "DNS resolution failed for collector:4317: C-ares status is not ARES_SUCCESS",
        address=address,
    )
    assert (dns.reason, dns.message) == (
        "connection_refused",
        "cannot resolve host name (collector:4317)",
    )


@pytest.mark.parametrize(
    ("endpoint", "address"),
    [
        ("http://127.0.0.1:4318/v1/traces", "127.0.0.1:4318"),
        ("https://user:pw@otlp.example/v1/traces?key=abc", "otlp.example:443"),
        ("http://otlp.example/v1/traces", "otlp.example:80"),
        ("http://[::1]:4317", "[::1]:4317"),
        ("collector:4317", "collector:4317"),
    ],
)
def test_endpoint_address(endpoint: str, address: str) -> None:
    assert endpoint_address(endpoint) == address
