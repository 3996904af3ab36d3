"""The OTLP export config seeded from OTEL_* variables (each gateway gets an explicit `env`,
never os.environ), checked at a real receiver; bad variables stop the start naming the variable
without echoing a secret.
"""

from __future__ import annotations

import pytest
from aigw.v1 import otel_config_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2

from admin.otel_config import MASK, InvalidConfig
from tests.clients import client_for
from tests.otel_config_support import (
    BAD_VALUE,
    SECRET_KEY,
    TRACE_ID,
    StartGateway,
    assert_no_secret,
    dur,
    flush_spans,
    received_headers,
)
from tests.otlp_receivers import GrpcOtlpReceiver, HttpOtlpReceiver

# --- environment seeding ----------------------------------------------------------------------


async def test_environment_base_endpoint_headers_temporality_and_exporter_none(
    start_gateway: StartGateway, http_rx: HttpOtlpReceiver
) -> None:
    env = {
        # A base URL (trailing slash and all): the signal paths are appended for http/protobuf.
        "OTEL_EXPORTER_OTLP_ENDPOINT": http_rx.endpoint + "/",
        # Percent-encoded values, as the spec says; names in any case.
        "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer%20env-s3cret%2Cpart2, X-Tenant = acme",
        "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "delta",
        "OTEL_TRACES_EXPORTER": "none",
    }
    gw = await start_gateway(env=env)
    channel, c = await client_for(gw)
    async with channel:
        got = await c.get()
        await c.complete()
    assert got.version == 0
    traces, metrics = got.config.traces, got.config.metrics
    assert traces.enabled is False  # OTEL_TRACES_EXPORTER=none
    assert traces.endpoint == http_rx.endpoint + "/v1/traces"
    assert metrics.enabled is True
    assert metrics.endpoint == http_rx.endpoint + "/v1/metrics"
    assert metrics.protocol == otel_config_pb2.PROTOCOL_HTTP
    assert metrics.encoding == otel_config_pb2.ENCODING_PROTO
    assert metrics.temporality == otel_config_pb2.TEMPORALITY_DELTA
    for section in (traces, metrics):
        assert dict(section.headers) == {"authorization": MASK, "x-tenant": MASK}
    assert_no_secret(got, ("env-s3cret", "acme"))

    # Stopping flushes the metric export: it arrives with the decoded header values, as delta.
    await gw.stop(grace=0.5)
    arrived = received_headers(http_rx, "/v1/metrics")
    assert arrived, http_rx.requests
    assert {h["authorization"] for h in arrived} == {"Bearer env-s3cret,part2"}
    assert {h["x-tenant"] for h in arrived} == {"acme"}
    assert received_headers(http_rx, "/v1/traces") == []
    temporalities = {
        metric.name: metric.histogram.aggregation_temporality
        for request in http_rx.metric_requests()
        for rm in request.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.WhichOneof("data") == "histogram"
    }
    assert temporalities.get("rpc.server.call.duration") == (
        metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
    ), temporalities


async def test_environment_signal_endpoint_is_used_verbatim_and_http_json(
    start_gateway: StartGateway, http_rx: HttpOtlpReceiver
) -> None:
    custom = http_rx.url("/custom/otlp/v1/traces")
    env = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": custom,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "2500",
    }
    gw = await start_gateway(env=env)
    channel, c = await client_for(gw)
    async with channel:
        got = await c.get()
        assert got.config.traces.enabled is True
        assert got.config.traces.endpoint == custom
        assert got.config.traces.encoding == otel_config_pb2.ENCODING_JSON
        assert got.config.traces.timeout == dur(2, 500_000_000)
        # No endpoint for metrics: they stay off.
        assert got.config.metrics.enabled is False
        assert got.config.metrics.endpoint == ""
        await c.complete(TRACE_ID)
        await flush_spans(gw)
    records = [r for r in http_rx.requests if r.path == "/custom/otlp/v1/traces"]
    assert records
    assert all(r.content_type.startswith("application/json") for r in records)
    assert http_rx.violations == []
    assert (TRACE_ID, "chat echo-1") in {(t, n) for t, _, n in http_rx.spans()}


async def test_environment_grpc_protocol_uses_the_base_endpoint_as_is(
    start_gateway: StartGateway, grpc_rx: GrpcOtlpReceiver
) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": grpc_rx.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-api-key=" + SECRET_KEY,
        "OTEL_METRICS_EXPORTER": "none",
    }
    gw = await start_gateway(env=env)
    channel, c = await client_for(gw)
    async with channel:
        got = await c.get()
        for section in (got.config.traces, got.config.metrics):
            assert section.protocol == otel_config_pb2.PROTOCOL_GRPC
            assert section.endpoint == grpc_rx.endpoint  # no /v1/... for gRPC
        assert got.config.traces.enabled is True
        assert got.config.metrics.enabled is False
        assert dict(got.config.traces.headers) == {"x-api-key": MASK}
        assert dict(got.config.metrics.headers) == {}  # the TRACES_ variable is traces only
        await c.complete(TRACE_ID)
        await flush_spans(gw)
    assert (TRACE_ID, "chat echo-1") in {(t, n) for t, _, n in grpc_rx.spans()}
    assert {r.metadata_dict.get("x-api-key") for r in grpc_rx.requests} == {SECRET_KEY}


@pytest.mark.parametrize(
    ("env", "named"),
    [
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "x",
            },
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
                "OTEL_EXPORTER_OTLP_TIMEOUT": "5s",
            },
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        ),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "127.0.0.1:4318"}, "traces.endpoint"),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
                "OTEL_EXPORTER_OTLP_HEADERS": "x-token=" + BAD_VALUE + "%0D%0Ax-evil: 1",
            },
            "traces.headers['x-token']",
        ),
    ],
    ids=["protocol", "timeout", "endpoint", "crlf-header-value"],
)
async def test_bad_environment_stops_the_start_naming_the_variable(
    start_gateway: StartGateway, env: dict[str, str], named: str
) -> None:
    with pytest.raises(InvalidConfig) as info:
        await start_gateway(env=env)
    assert named in str(info.value)
    assert BAD_VALUE not in str(info.value)


async def test_a_malformed_headers_variable_does_not_echo_the_secret(
    start_gateway: StartGateway,
) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization:Bearer sk-live-0123456789abcdef",
    }
    with pytest.raises(InvalidConfig) as info:
        await start_gateway(env=env)
    assert "OTEL_EXPORTER_OTLP_TRACES_HEADERS" in str(info.value)
    assert "sk-live-0123456789abcdef" not in str(info.value)


async def test_an_infinite_timeout_variable_is_an_invalid_config(
    start_gateway: StartGateway,
) -> None:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_EXPORTER_OTLP_TIMEOUT": "inf"}
    with pytest.raises(InvalidConfig, match="OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"):
        await start_gateway(env=env)
